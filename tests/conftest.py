"""Fixtures on real parts: a Redis-protocol server process, a tiny GPT-2, real worker processes."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Re-exported for the tests (`from conftest import RedisProcess, free_port`).
from genq.devtools.redis_server import RedisProcess as RedisProcess
from genq.devtools.redis_server import free_port as free_port
from genq.devtools.redis_server import server_binary as server_binary
from genq.devtools.redis_server import valkey_binary as valkey_binary
from genq.producer.client import Client
from genq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Prompts that exercise tokenisation and padding: scripts, emoji, quotes, newlines, lengths.
PROMPTS = [
    "Write a tagline for a bakery",
    "人工智能生成内容",
    'Emoji 🚀🎉 and "quotes"',
    "A much longer prompt about product descriptions, quarterly reports and marketing copy "
    "that goes on for a while so that left padding matters in the batch",
    "x",
    "line one\nline two\n",
    "Summarise: revenue grew 12%",
    "Le café est prêt",
]


def one_at_a_time(
    engine: Any, prompt_ids: list[int], max_new_tokens: int, **kwargs: Any
) -> list[int]:
    """The seed tutorial's way, the reference for greedy output: one prompt, plain
    ``model.generate``, no padding. Returns the new token ids."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = engine.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=engine.pad_id,
            **kwargs,
        )
    return list(out[0, ids.shape[1] :].tolist())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 with random weights and a tokenizer trained on the fly (128 positions)."""
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    preset = PRESETS["tiny"]
    small = type(preset)(preset.n_layer, preset.n_embd, preset.n_head, 128, preset.vocab_size)
    return build_random_gpt2(tmp_path_factory.mktemp("model") / "tiny-gpt2", small)


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def start_worker(
    redis_server: RedisProcess, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartWorker]:
    """Start ``genq worker`` subprocesses (GENQ_* overrides as keyword arguments)."""
    started: list[WorkerProcess] = []

    def start(*args: str, wait: bool = True, **env: str) -> WorkerProcess:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        full_env = {
            **os.environ,
            "GENQ_REDIS_URL": redis_server.url,
            "GENQ_MODEL": str(tiny_model),
            "GENQ_DEVICE": "cpu",
            "GENQ_HEARTBEAT_S": "1",
            "PYTHONUNBUFFERED": "1",
            **{f"GENQ_{k.upper()}": str(v) for k, v in env.items()},
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=ROOT,
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        if wait:
            deadline = time.monotonic() + 120
            while "ready: engine=" not in worker.output():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{worker.output()}")
                time.sleep(0.1)
        return worker

    yield start
    for worker in started:  # all at once: each warm shutdown takes a moment
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker(start_worker: StartWorker) -> WorkerProcess:
    """One shared worker: batches of up to 16 sequences, waiting up to 300 ms for neighbours."""
    return start_worker(max_batch_size="16", max_wait_ms="300")


@pytest.fixture(scope="session", params=["hf", "hf-static", "ct2", "null"])
def engine_worker(
    request: pytest.FixtureRequest,
    start_worker: StartWorker,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str]:
    """A worker of each engine (and batching mode), each on its own queue: (engine, queue)."""
    engine, _, mode = str(request.param).partition("-")
    queue = f"generate-{request.param}"
    start_worker(
        engine=engine,
        queue=queue,
        batching=mode or "continuous",
        max_batch_size="16",
        max_wait_ms="200",
        ct2_compute_type="float32",
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return engine, queue


@pytest.fixture
def settings(redis_server: RedisProcess) -> Settings:
    return Settings(redis_url=redis_server.url, chunk_size=4)


@pytest.fixture
def client(settings: Settings) -> Client:
    return Client(settings=settings)


@pytest.fixture
def genq_cli(
    redis_server: RedisProcess, tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the ``genq`` command as a user would (a subprocess), against the test server."""

    def run(
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "GENQ_REDIS_URL": redis_server.url,
            "GENQ_CHUNK_SIZE": "4",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "genq", *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=tmp_path,
            timeout=timeout,
        )

    return run


@pytest.fixture
def http_server() -> Iterator[int]:
    """A plain HTTP server on a free port (what a redis:// URL with a web port reaches)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
