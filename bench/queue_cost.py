"""What a queued item costs: Redis bytes per item while it waits, and the null-engine queue path.

    python -m bench.queue_cost                  # 20,000 30-byte prompts, 3 alternating runs
    python -m bench.queue_cost --items 5000 --runs 1

Bytes: a job is submitted with no worker consuming its queue, and the queue list's
``MEMORY USAGE`` (every element sampled) is divided by the job's items; the job record is
counted apart. Speed: the same job through a ``genq worker`` on the ``null`` engine (no model),
from submit to the last result, as ``bench/e2e.py`` measures it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click

from bench.e2e import run_genq
from bench.workloads import Workload
from genq import keyspace
from genq.devtools.redis_server import RedisProcess
from genq.producer.client import Client
from genq.settings import Settings

PROMPT_BYTES = 30


def prompts(n: int) -> list[str]:
    """``n`` distinct prompts of exactly PROMPT_BYTES bytes."""
    return [f"Describe product {i:08d} now."[:PROMPT_BYTES].ljust(PROMPT_BYTES) for i in range(n)]


def queued_bytes(url: str, n: int, chunk_size: int, params: dict[str, object]) -> dict[str, float]:
    """Redis bytes per queued item, for a job no worker takes."""
    queue = f"bytes-{time.time_ns()}"
    client = Client(
        settings=Settings(
            redis_url=url, queue=queue, chunk_size=chunk_size, max_items_per_job=1_000_000
        )
    )
    job_id = client.submit(prompts(n), params)
    r = client.store.redis
    # Fair scheduling keeps most messages on the job's pending list, the rest in the queue.
    lists = (*keyspace.celery_queue_lists(queue), keyspace.sched_pending(queue, job_id))
    queue_bytes = sum(int(r.memory_usage(key, samples=0) or 0) for key in lists)
    job_bytes = int(r.memory_usage(keyspace.job(job_id), samples=0) or 0)
    messages = sum(int(r.llen(key)) for key in lists)
    client.cancel(job_id)
    r.delete(*lists)
    return {
        "items": n,
        "messages": messages,
        "queue_bytes_per_item": queue_bytes / n,
        "job_record_bytes": job_bytes,
        "bytes_per_item": (queue_bytes + job_bytes) / n,
    }


@click.command()
@click.option("--items", type=int, default=20_000, show_default=True)
@click.option("--runs", type=int, default=3, show_default=True)
@click.option("--chunk-size", type=int, default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench-out/queue-cost")
def main(items: int, runs: int, chunk_size: int, out: str) -> None:
    """Measure queued bytes per item and the null-engine queue path."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"max_new_tokens": 16, "stop": ["\n\n", "###"], "temperature": 0.7}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp), appendonly=False)
        server.start()
        try:
            sizes = queued_bytes(server.url, items, chunk_size, params)
            click.echo(json.dumps(sizes), err=True)
            rates = []
            for run in range(runs):
                work = Workload("queue", [{"prompt": p} for p in prompts(items)], params)
                m = run_genq(
                    server.url, "unused", "null", work, 256, "cpu", out_dir, chunk_size=chunk_size
                )
                rates.append(m.prompts / m.seconds)
                click.echo(f"run {run + 1}: {rates[-1]:,.0f} prompts/s", err=True)
        finally:
            server.stop()
    result = {**sizes, "chunk_size": chunk_size, "prompts_per_s": rates}
    result["median_prompts_per_s"] = statistics.median(rates) if rates else None
    (out_dir / "queue-cost.json").write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
