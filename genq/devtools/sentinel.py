"""A private Redis Sentinel group for tests: a primary, its replicas and Sentinels, each a real
``redis-server`` process on a free loopback port (Debian's ``redis-server`` runs as a Sentinel
with ``--sentinel``; ``redis-sentinel`` is the same binary under another name), with short
failure detection so that a failover takes seconds.

Imports neither torch nor transformers.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis

from genq.devtools.redis_server import RedisProcess, RedisServerError, die_with_parent, free_port

MASTER_NAME = "genq-primary"
DOWN_AFTER_MS = 1000  # a primary silent this long is down for a Sentinel
FAILOVER_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Security:
    """A password for every server (``requirepass``, ``masterauth``, the Sentinels'
    ``auth-pass``) and, with ``ca_cert``, TLS only: a CA, and a certificate for 127.0.0.1 it
    signed, used by every server and Sentinel (``tls-replication yes``: TLS between them too)."""

    password: str | None = None
    sentinel_password: str | None = None  # the Sentinels' own (requirepass in sentinel.conf)
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def server_args(self) -> list[str]:
        args: list[str] = []
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.ca_cert is not None:
            args += [*self._tls_files("--"), "--tls-auth-clients", "no", "--tls-replication", "yes"]
        return args

    def sentinel_lines(self) -> list[str]:
        lines = [f"requirepass {self.sentinel_password}"] if self.sentinel_password else []
        if self.ca_cert is None:
            return lines
        files = self._tls_files("")
        pairs = [f"{files[i]} {files[i + 1]}" for i in range(0, len(files), 2)]
        return [*lines, *pairs, "tls-auth-clients no", "tls-replication yes"]

    def client_options(self) -> dict[str, object]:
        """For a client of a server (the password) or of a Sentinel (TLS alone)."""
        if self.ca_cert is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": str(self.ca_cert)}

    def _tls_files(self, dashes: str) -> list[str]:
        return [
            *(f"{dashes}tls-cert-file", str(self.cert)),
            *(f"{dashes}tls-key-file", str(self.key)),
            *(f"{dashes}tls-ca-cert-file", str(self.ca_cert)),
        ]


class ServerProcess(RedisProcess):
    """A ``redis-server`` of the group: a replica of ``primary_port`` when given, with the
    group's password and TLS; otherwise as :class:`RedisProcess`."""

    def __init__(
        self,
        directory: Path,
        primary_port: int | None = None,
        security: Security | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(directory, **kwargs)  # type: ignore[arg-type]
        self.primary_port = primary_port
        self.security = security or Security()

    def command(self) -> list[str]:
        args = super().command()
        if self.security.ca_cert is not None:  # a TLS port alone
            at = args.index("--port")
            args[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        args += self.security.server_args()
        if self.primary_port is not None:
            args += ["--replicaof", "127.0.0.1", str(self.primary_port)]
        return args

    def admin(self) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            password=self.security.password,
            decode_responses=True,
            socket_connect_timeout=1,
            **self.security.client_options(),  # type: ignore[arg-type]
        )

    def _wait_until_up(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with self.admin() as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if process.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    self.kill()
                    raise RedisServerError(
                        f"redis-server on port {self.port} did not start"
                    ) from None


class SentinelProcess:
    """One Sentinel (``redis-server sentinel.conf --sentinel``) monitoring ``primary_port``
    as ``master_name``; it rewrites its configuration file as it learns (a directory of its
    own)."""

    def __init__(
        self,
        directory: Path,
        primary_port: int,
        quorum: int,
        *,
        master_name: str = MASTER_NAME,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        binary: str | None = None,
        log: Path | None = None,
        security: Security | None = None,
    ) -> None:
        self.directory = directory
        self.security = security or Security()
        self.primary_port = primary_port
        self.quorum = quorum
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = binary or RedisProcess(directory).binary
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        name = self.master_name
        tls = self.security.ca_cert is not None
        auth = [f"sentinel auth-pass {name} {self.security.password}"]
        return "\n".join(
            [
                f"port 0\ntls-port {self.port}" if tls else f"port {self.port}",
                *self.security.sentinel_lines(),
                "bind 127.0.0.1",
                f"dir {self.directory}",
                f"sentinel monitor {name} 127.0.0.1 {self.primary_port} {self.quorum}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
                *(auth if self.security.password else []),
                "",
            ]
        )

    def start(self, timeout_s: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        conf.write_text(self.config())
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            out = self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                [self.binary, str(conf), "--sentinel"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        finally:
            if not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client().ping()
                return
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RedisServerError(f"sentinel on port {self.port} did not start") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=5,
            password=self.security.sentinel_password,
            **self.security.client_options(),  # type: ignore[arg-type]
        )

    def state(self) -> dict[str, object]:
        """What this Sentinel knows of its master (SENTINEL MASTER)."""
        with self.client() as client:
            state: dict[str, object] = client.sentinel_master(self.master_name)  # type: ignore[no-untyped-call]
            return state

    def primary_port_now(self) -> int:
        """The port of the primary this Sentinel names now."""
        with self.client() as client:
            address = client.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[no-untyped-call]
            return int(address[1])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum: a majority) in
    ``directory``; :meth:`start` returns once every Sentinel sees every replica and every
    other Sentinel, so that a failover can happen at once."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        appendonly: bool = True,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        security: Security | None = None,
    ) -> None:
        logs = directory / "logs"
        self.directory = directory
        self.security = security or Security()
        self.primary = ServerProcess(
            directory / "primary",
            security=self.security,
            appendonly=appendonly,
            log=logs / "primary.log",
        )
        self.replicas = [
            ServerProcess(
                directory / f"replica{i}",
                self.primary.port,
                self.security,
                appendonly=appendonly,
                log=logs / f"replica{i}.log",
            )
            for i in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            SentinelProcess(
                directory / f"sentinel{i}",
                self.primary.port,
                quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                log=logs / f"sentinel{i}.log",
                security=self.security,
            )
            for i in range(sentinels)
        ]

    def url(self, db: int = 0, credentials: str = "", query: str = "") -> str:
        """genq's Sentinel URL for this group (``credentials``: ``user:password@``)."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"sentinel://{credentials}{hosts}/{MASTER_NAME}/{db}{query}"

    def servers(self) -> list[ServerProcess]:
        return [self.primary, *self.replicas]

    def admin(self, port: int) -> redis.Redis:
        """A client of the group's server on ``port`` (its password, its TLS)."""
        (server,) = [s for s in self.servers() if s.port == port]
        return server.admin()

    def start(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        with self.primary.admin() as primary:
            _until(
                lambda: _replicas_online(primary) == len(self.replicas),
                deadline,
                "the replicas to sync",
            )
        for sentinel in self.sentinels:
            sentinel.start()
        want_sentinels, want_replicas = len(self.sentinels) - 1, len(self.replicas)

        def ready() -> bool:
            for sentinel in self.sentinels:
                state = sentinel.state()
                if int(str(state.get("num-other-sentinels", 0))) < want_sentinels:
                    return False
                if int(str(state.get("num-slaves", 0))) < want_replicas:
                    return False
            return True

        _until(ready, deadline, "the Sentinels to see each other and the replicas")

    def primary_port(self) -> int:
        """The primary's port as the first live Sentinel names it now."""
        for sentinel in self.sentinels:
            if sentinel.process is not None:
                return sentinel.primary_port_now()
        raise RedisServerError("no Sentinel is running")

    def kill_primary(self) -> ServerProcess:
        """SIGKILL the current primary; returns it (killed)."""
        port = self.primary_port()
        (server,) = [s for s in self.servers() if s.port == port]
        server.kill()
        return server

    def wait_for_failover(self, old_port: int, timeout_s: float = 60.0) -> int:
        """Wait until every Sentinel names a new primary that answers as one; its port."""
        deadline = time.monotonic() + timeout_s
        new_port = 0

        def promoted() -> bool:
            nonlocal new_port
            ports = {s.primary_port_now() for s in self.sentinels if s.process is not None}
            if len(ports) != 1 or old_port in ports:
                return False
            (new_port,) = ports
            with self.admin(new_port) as server:
                role: dict[str, object] = server.info("replication")  # type: ignore[assignment]
                return role.get("role") == "master"

        _until(promoted, deadline, "the Sentinels to promote a replica")
        return new_port

    def restart(self, server: ServerProcess, timeout_s: float = 60.0) -> None:
        """Start a killed server again on its port and files: the Sentinels make it a replica
        of the primary they name now. Returns once every replica is in sync with it."""
        deadline = time.monotonic() + timeout_s
        server.start()
        port = self.primary_port()
        with self.admin(port) as primary:
            _until(
                lambda: _replicas_online(primary) == len(self.servers()) - 1,
                deadline,
                "the restarted server to replicate the new primary",
            )

        def seen_as_replica() -> bool:  # by every Sentinel: a candidate for the next failover
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    replicas = client.sentinel_slaves(MASTER_NAME)  # type: ignore[no-untyped-call]
                ok = [
                    r
                    for r in replicas
                    if int(r.get("port", 0)) == server.port
                    and r.get("flags") == "slave"
                    and r.get("master-link-status") == "ok"
                ]
                if not ok:
                    return False
            return True

        _until(seen_as_replica, deadline, "the Sentinels to see the restarted server as a replica")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers():
            server.kill()


def _replicas_online(primary: redis.Redis) -> int:
    info: dict[str, object] = primary.info("replication")  # type: ignore[assignment]
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


def _until(predicate: object, deadline: float, what: str) -> None:
    while True:
        try:
            if predicate():  # type: ignore[operator]
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RedisServerError(f"timed out waiting for {what}")
        time.sleep(0.1)
