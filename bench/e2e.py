"""genq end to end: client -> Redis -> ``genq worker`` subprocess -> results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.workloads import Workload
from genq.producer.client import Client
from genq.settings import Settings

READY_TIMEOUT_S = 600.0


@dataclass
class Measurement:
    tokens: int
    prompts: int
    seconds: float
    peak_rss_mb: float


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_genq(
    redis_url: str,
    model: str,
    engine: str,
    work: Workload,
    batch_size: int,
    device: str,
    log_dir: Path,
    chunk_size: int = 16,
    extra_env: dict[str, str] | None = None,
) -> Measurement:
    """Start a worker, wait until it serves, push ``work`` through it, stop it."""
    queue = f"bench-{engine}-{os.getpid()}-{time.time_ns()}"
    env = {
        **os.environ,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_MODEL": model,
        "GENQ_ENGINE": engine,
        "GENQ_DEVICE": device,
        "GENQ_QUEUE": queue,
        "GENQ_MAX_BATCH_SIZE": str(batch_size),
        "GENQ_HEARTBEAT_S": "1",
        **(extra_env or {}),
    }
    log_path = log_dir / f"worker-{engine}-{work.name}.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "genq", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        client = Client(
            settings=Settings(
                redis_url=redis_url, queue=queue, chunk_size=chunk_size, max_items_per_job=1_000_000
            )
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready: engine=" not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        warm = client.submit([i["prompt"] for i in work.items[:2]], {"max_new_tokens": 2})
        client.wait(warm, timeout_s=300, poll_interval_s=0.05)
        started = time.perf_counter()
        job_id = client.submit(work.items, work.params)
        info = client.wait(job_id, timeout_s=3600, poll_interval_s=0.02)
        seconds = time.perf_counter() - started
        if info.completed != len(work.items):
            raise RuntimeError(f"job ended {info.status.value} with {info.failed} failed items")
        tokens = sum(r.usage.completion_tokens for r in client.iter_results(job_id))
        return Measurement(tokens, len(work.items), seconds, peak_rss_mb(worker.pid))
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
