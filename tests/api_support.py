"""Running the real API for tests: `genq api` as a subprocess on a free port, a tenants file,
and an HTTP server that receives webhooks."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from genq.devtools.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class ApiProcess:
    """A `genq api` subprocess."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port, self.process, self.log = port, process, log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_api(port: int, log: Path, env: dict[str, str]) -> ApiProcess:
    """Start `genq api --port PORT` with GENQ_* ``env``; wait until /healthz answers."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "genq", "api", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    api = ApiProcess(port, process, log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"genq api did not start:\n{api.output()}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


@contextmanager
def api_for(redis_url: str, log: Path, queue: str, key: str) -> Iterator[ApiProcess]:
    """A `genq api` on a free port, on ``queue`` with one API ``key``; stopped afterwards."""
    server = start_api(
        free_port(), log, {"GENQ_REDIS_URL": redis_url, "GENQ_QUEUE": queue, "GENQ_API_KEYS": key}
    )
    try:
        yield server
    finally:
        server.stop()


def tenants_file(path: Path, tenants: dict[str, dict[str, Any]]) -> Path:
    """A GENQ_API_TENANTS_FILE holding ``tenants`` (name -> fields)."""
    lines = []
    for name, fields in tenants.items():
        lines.append(f"[tenants.{json.dumps(name)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class WebhookReceiver:
    """Records every POST; answers 500 to the first delivery of each webhook-id when
    ``fail_first`` is set, 200 otherwise."""

    fail_first: bool = True
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = any(
                    r.headers.get("webhook-id") == headers.get("webhook-id")
                    for r in receiver.requests
                )
                status = 500 if receiver.fail_first and not seen else 200
                receiver.requests.append(Received(headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def for_data(self, ident: str) -> list[Received]:
        return [r for r in self.requests if json.loads(r.body)["data"]["id"] == ident]
