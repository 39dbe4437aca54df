"""Throughput against the number of workers on one Redis, with what Redis spends on it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import redis

from bench.scaling.probes import (
    ServerSample,
    client_for,
    measured_job,
    prompts,
    run_job,
    server_delta,
    unique_queue,
    workers,
)

WARMUP_ITEMS = 64
IDLE_S = 6.0  # longer than a heartbeat (GENQ_HEARTBEAT_S, 5 s by default)


def idle_cost(servers: Mapping[str, redis.Redis], count: int) -> dict[str, float]:
    """Commands/s and CPU (% of a core) each server spends on ``count`` idle workers."""
    before = {name: ServerSample.take(r) for name, r in servers.items()}
    time.sleep(IDLE_S)
    out = {}
    for name, r in servers.items():
        d = server_delta(before[name], ServerSample.take(r), IDLE_S, 1)
        out[f"{name}_calls_per_s"] = d["calls_per_item"] / IDLE_S
        out[f"{name}_calls_per_s_per_worker"] = d["calls_per_item"] / IDLE_S / count
        out[f"{name}_cpu_pct_of_core"] = d["cpu_pct_of_core"]
    return out


def series(
    servers: Mapping[str, redis.Redis],
    urls: Mapping[str, str],
    counts: Sequence[int],
    batch_ms: int,
    items_for: Callable[[int], int],
    chunk_size: int | None,
    batch_size: int,
    repeats: int,
    log_dir: Path,
    tag: str,
) -> list[dict[str, Any]]:
    """One point per worker count: ``repeats`` jobs of ``items_for(n)`` items through ``n``
    fresh null workers at ``batch_ms`` per batch; Redis is flushed before each point."""
    env = {"GENQ_NULL_BATCH_MS": str(batch_ms), "GENQ_MAX_BATCH_SIZE": str(batch_size)}
    extra: dict[str, Any] = {}
    if "results" in urls:
        env["GENQ_RESULTS_URL"] = urls["results"]
        extra["results_url"] = urls["results"]
    points = []
    for n in counts:
        for r in servers.values():
            r.flushall()
        queue = unique_queue(f"{tag}-{n}w")
        items = prompts(items_for(n))
        with workers(n, urls["broker"], queue, env, log_dir) as pool:
            client = client_for(urls["broker"], queue, chunk_size, **extra)
            run_job(client, prompts(WARMUP_ITEMS, seed=1))
            # What idle workers cost Redis, once per series (at its most workers).
            idle = idle_cost(servers, n) if n == max(counts) else None
            runs = []
            for rep in range(repeats):
                m = measured_job(client, servers, pool, items)
                runs.append(m)
                broker = m["redis"]["broker"]
                click.echo(
                    f"[{tag}] {n} worker(s), {batch_ms} ms/batch, run {rep + 1}: "
                    f"{m['items_per_s']:,.0f} items/s ({m['items']:,} in {m['seconds']:.2f} s, "
                    f"submit {m['submit_s']:.2f} s); "
                    f"Redis {broker['cpu_pct_of_core']:.0f} % of a core, workers "
                    f"{m['workers_cpu_pct_of_core']:.0f} %, producer "
                    f"{m['producer_cpu_pct_of_core']:.0f} %",
                    err=True,
                )
        rates = [m["items_per_s"] for m in runs]
        points.append(
            {
                "workers": n,
                "batch_ms": batch_ms,
                "items": len(items),
                "items_per_s": statistics.median(rates),
                "idle": idle,
                "runs": runs,
            }
        )
    add_efficiency(points)
    return points


def add_efficiency(points: list[dict[str, Any]]) -> None:
    """efficiency = throughput(N) / (N x throughput(1)), against the 1-worker point."""
    one = next((p["items_per_s"] for p in points if p["workers"] == 1), None)
    for p in points:
        p["ideal_items_per_s"] = one * p["workers"] if one else None
        p["efficiency"] = p["items_per_s"] / p["ideal_items_per_s"] if one else None
        runs = p["runs"]
        p["summary"] = {
            key: statistics.median(m[key] for m in runs)
            for key in (
                "seconds",
                "submit_s",
                "workers_cpu_pct_of_core",
                "producer_cpu_pct_of_core",
            )
        } | {
            f"{name}_{key}": statistics.median(m["redis"][name][key] for m in runs)
            for name in runs[0]["redis"]
            for key in ("cpu_pct_of_core", "calls_per_item", "cpu_us_per_item")
        }
        at_core = [m["redis"]["broker"]["items_per_s_at_one_core"] for m in runs]
        p["summary"]["broker_items_per_s_at_one_core"] = statistics.median(x for x in at_core if x)
