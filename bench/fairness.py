"""Fair scheduling, measured: a small job's latency behind a large one, and the queue path's cost.

    python -m bench.fairness                       # 2 null workers at 40 ms per batch
    python -m bench.fairness --large 20000 --repeats 5 --batch-ms 40

Latency: two ``genq worker`` processes on the ``null`` engine with a fixed cost per batch
(GENQ_NULL_BATCH_MS, as GPU-bound workers behave). A 20-item job is timed from submit to its
last result: alone on idle workers; then submitted while a large job runs, under
GENQ_SCHEDULING=fifo (one Celery queue in submission order: genq before fair scheduling) and
=fair (the default), at ``normal`` and at ``high`` priority. For each, how far the large job
advanced meanwhile.

Queue path: one null worker at no batch cost, 20,000 prompts from submit to the last result,
fifo and fair alternated (``bench/queue_cost.py``'s measure), so the feeder's own cost shows.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bench.e2e import run_genq
from bench.queue_cost import prompts as fixed_prompts
from bench.workloads import Workload
from genq.devtools.redis_server import RedisProcess
from genq.producer.client import Client
from genq.settings import Settings

SMALL = 20


@contextmanager
def workers(url: str, queue: str, count: int, env: dict[str, str], log_dir: Path) -> Iterator[None]:
    """``count`` null workers on ``queue``, ready; stopped on exit."""
    full = {
        **os.environ,
        "GENQ_REDIS_URL": url,
        "GENQ_QUEUE": queue,
        "GENQ_ENGINE": "null",
        "GENQ_HEARTBEAT_S": "1",
        **env,
    }
    procs, logs = [], []
    for n in range(count):
        log = log_dir / f"worker-{queue}-{n}.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "genq", "worker"],
                    env=full,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        logs.append(log)
    try:
        for log, proc in zip(logs, procs, strict=True):
            while "ready: engine=" not in log.read_text(errors="replace"):
                if proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-3000:])
                time.sleep(0.1)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)


def small_latency(client: Client, priority: str) -> float:
    started = time.perf_counter()
    job = client.submit([f"small {i}" for i in range(SMALL)], priority=priority)
    client.wait(job, timeout_s=600, poll_interval_s=0.005)
    return time.perf_counter() - started


def behind_large(client: Client, large: int, priority: str, repeats: int) -> dict[str, Any]:
    """Small-job latencies while a ``large``-item job runs, and how far it moved meanwhile."""
    big = client.submit([f"large {i}" for i in range(large)])
    while client.status(big).done < large // 20:
        time.sleep(0.01)
    latencies, advances = [], []
    for _ in range(repeats):
        before = client.status(big).done
        latencies.append(small_latency(client, priority))
        advances.append(client.status(big).done - before)
        if client.status(big).pending < large // 4:
            break  # keep measuring against a backlog
    client.cancel(big)
    return {
        "latency_s": latencies,
        "median_latency_s": statistics.median(latencies),
        "large_advanced_items": advances,
        "median_large_advanced_items": statistics.median(advances),
    }


def latency_scenarios(
    url: str, large: int, repeats: int, batch_ms: int, log_dir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scheduling in ("fifo", "fair"):
        queue = f"fair-bench-{scheduling}"
        env = {"GENQ_NULL_BATCH_MS": str(batch_ms), "GENQ_SCHEDULING": scheduling}
        settings = Settings(
            redis_url=url, queue=queue, scheduling=scheduling, max_items_per_job=1_000_000
        )
        client = Client(settings=settings)
        with workers(url, queue, 2, env, log_dir):
            if scheduling == "fifo":
                alone = [small_latency(client, "normal") for _ in range(repeats)]
                results["alone"] = {
                    "latency_s": alone,
                    "median_latency_s": statistics.median(alone),
                }
            for priority in ("normal", "high") if scheduling == "fair" else ("normal",):
                key = f"behind_large_{scheduling}_{priority}"
                results[key] = behind_large(client, large, priority, repeats)
                click.echo(f"{key}: {json.dumps(results[key])}", err=True)
    return results


def queue_path(url: str, items: int, runs: int, log_dir: Path) -> dict[str, Any]:
    """Prompts/s of one null worker (no batch cost), fifo vs fair, alternated."""
    rates: dict[str, list[float]] = {"fifo": [], "fair": []}
    params = {"max_new_tokens": 16}
    for _ in range(runs):
        for scheduling in ("fifo", "fair"):
            os.environ["GENQ_SCHEDULING"] = scheduling  # the producer (run_genq's client)
            work = Workload("queue", [{"prompt": p} for p in fixed_prompts(items)], params)
            m = run_genq(
                url,
                "unused",
                "null",
                work,
                256,
                "cpu",
                log_dir,
                extra_env={"GENQ_SCHEDULING": scheduling},
            )
            rates[scheduling].append(m.prompts / m.seconds)
            click.echo(f"{scheduling}: {rates[scheduling][-1]:,.0f} prompts/s", err=True)
    os.environ.pop("GENQ_SCHEDULING", None)
    return {
        "items": items,
        "prompts_per_s": rates,
        "median_prompts_per_s": {k: statistics.median(v) for k, v in rates.items()},
    }


@click.command()
@click.option("--large", type=int, default=20_000, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--batch-ms", type=int, default=40, show_default=True)
@click.option("--queue-items", type=int, default=20_000, show_default=True)
@click.option("--queue-runs", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="bench-out/fairness.json")
def main(
    large: int, repeats: int, batch_ms: int, queue_items: int, queue_runs: int, out: str
) -> None:
    """Measure small-job latency behind a large job (alone, fifo, fair) and the queue path."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp), appendonly=False)
        server.start()
        try:
            result = {
                "machine": f"{os.cpu_count()} CPUs",
                "workers": 2,
                "batch_ms": batch_ms,
                "large_items": large,
                "small_items": SMALL,
                "latency": latency_scenarios(server.url, large, repeats, batch_ms, Path(tmp)),
                "queue_path": queue_path(server.url, queue_items, queue_runs, Path(tmp)),
            }
        finally:
            server.stop()
    Path(out).write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
