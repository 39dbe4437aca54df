"""``python -m bench.scaling``: workers against one Redis, per-item cost, memory per 1M results.

    python -m bench.scaling                                   # the full run (docs/scaling.md)
    python -m bench.scaling --workers 1,2 --per-worker-items 500 --saturation-workers 1 \\
        --saturation-items 2000 --memory-items 5000 --memory-other-items 2000 --small-jobs 20

Writes scaling.json, scaling.png and tables.md (the tables docs/scaling.md quotes) under --out.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import redis

from bench.scaling import curve, memory, report
from genq.devtools.redis_server import RedisProcess, server_binary, valkey_binary


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def machine(r: redis.Redis) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = r.info("server")
    server = (
        f"valkey {info['valkey_version']}"
        if "valkey_version" in info
        else (f"redis {info['redis_version']}")
    )
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, {server}"


@click.command()
@click.option("--workers", "worker_counts", default="1,2,4,8", show_default=True)
@click.option(
    "--batch-ms",
    type=int,
    default=50,
    show_default=True,
    help="GENQ_NULL_BATCH_MS of the scaling curve (a GPU-bound worker's shape).",
)
@click.option(
    "--per-worker-items",
    type=int,
    default=3000,
    show_default=True,
    help="Curve job size: items = workers x this.",
)
@click.option(
    "--saturation-workers",
    default="1,2,4,8",
    show_default=True,
    help="Worker counts of the queue-bound series ('' skips it).",
)
@click.option("--saturation-batch-ms", type=int, default=0, show_default=True)
@click.option(
    "--saturation-items",
    type=int,
    default=20_000,
    show_default=True,
    help="Queue-bound job size (the 1-worker run is the per-item cost table).",
)
@click.option("--repeats", type=int, default=1, show_default=True, help="Jobs per point.")
@click.option(
    "--chunk-size", type=int, default=None, help="GENQ_CHUNK_SIZE (default: genq's, by job size)."
)
@click.option(
    "--batch-size",
    type=int,
    default=32,
    show_default=True,
    help="GENQ_MAX_BATCH_SIZE of the workers.",
)
@click.option(
    "--memory-items",
    type=int,
    default=100_000,
    show_default=True,
    help="Items of the main memory run (64-char outputs); 0 skips memory.",
)
@click.option(
    "--memory-other-items",
    type=int,
    default=20_000,
    show_default=True,
    help="Items of the other memory runs (null engine, other output lengths).",
)
@click.option("--output-chars", default="64,1000,4000", show_default=True)
@click.option(
    "--small-jobs",
    type=int,
    default=200,
    show_default=True,
    help="Jobs of 100 items and of 1 item for the encoding runs (0 skips them).",
)
@click.option(
    "--server",
    type=click.Choice(["redis", "valkey"]),
    default="redis",
    show_default=True,
    help="redis: Debian's redis-server if installed.",
)
@click.option(
    "--results-redis",
    is_flag=True,
    help="A second Redis for results (GENQ_RESULTS_URL) in the curve and saturation.",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A GENQ_ setting for the producer and every worker (repeatable), e.g. "
    "GENQ_FEED_DEPTH=16 or GENQ_SCHEDULING=fifo.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), default="bench-out/scaling", show_default=True
)
def main(
    worker_counts: str,
    batch_ms: int,
    per_worker_items: int,
    saturation_workers: str,
    saturation_batch_ms: int,
    saturation_items: int,
    repeats: int,
    chunk_size: int | None,
    batch_size: int,
    memory_items: int,
    memory_other_items: int,
    output_chars: str,
    small_jobs: int,
    server: str,
    results_redis: bool,
    env_pairs: tuple[str, ...],
    out: str,
) -> None:
    """Measure throughput against workers on one Redis, its cost per item, and memory."""
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("GENQ_"):
            raise click.BadParameter(f"{pair!r} is not GENQ_NAME=VALUE", param_hint="--env")
        os.environ[key] = value  # read by the producer's Settings and copied to each worker
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = server_binary() if server == "redis" else valkey_binary()
    started = time.time()
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.scaling", *sys.argv[1:]]),
        "started_at": started,
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp_dir = Path(tmp)
        names = ["broker", "results"] if results_redis else ["broker"]
        procs = {}
        for name in names:
            proc = RedisProcess(
                tmp_dir / name, appendonly=True, binary=binary, log=tmp_dir / f"{name}.log"
            )
            proc.start()
            stack.callback(proc.stop)
            procs[name] = proc
        urls = {name: p.url for name, p in procs.items()}
        servers = {name: redis.Redis.from_url(u) for name, u in urls.items()}
        broker = servers["broker"]
        result["machine"] = machine(broker)
        result["redis_config"] = {
            k: broker.config_get(k)[k]
            for k in (
                "appendonly",
                "appendfsync",
                "save",
                "hash-max-listpack-entries",
                "hash-max-listpack-value",
            )
        }
        result["settings"] = {
            "chunk_size": chunk_size,
            "max_batch_size": batch_size,
            "env": dict(p.partition("=")[::2] for p in env_pairs),
        }
        plans = (
            ("curve", worker_counts, batch_ms, lambda n: n * per_worker_items),
            ("saturation", saturation_workers, saturation_batch_ms, lambda n: saturation_items),
        )
        for key, worker_list, ms, items_for in plans:
            if counts(worker_list):
                result[key] = curve.series(
                    servers,
                    urls,
                    counts(worker_list),
                    ms,
                    items_for,
                    chunk_size,
                    batch_size,
                    repeats,
                    tmp_dir,
                    "curve" if key == "curve" else "queue",
                )
        per_item = {}
        for key in ("saturation", "curve"):
            one = next((p for p in result.get(key, []) if p["workers"] == 1), None)
            if one:
                label = f"1 worker, {one['items']:,} items, {one['batch_ms']} ms/batch"
                per_item[label] = one["runs"][0]["redis"]["broker"]
        result["per_item"] = per_item
        if results_redis:
            warn_unused_results_server(result)
        if memory_items:
            result["memory"] = memory.memory_study(
                broker,
                urls["broker"],
                memory_items,
                memory_other_items,
                counts(output_chars),
                small_jobs,
                tmp_dir,
            )
    result["seconds"] = time.time() - started
    result["load_average_at_end"] = os.getloadavg()
    (out_dir / "scaling.json").write_text(json.dumps(result, indent=2, default=str))
    report.plot(result, out_dir / "scaling.png")
    (out_dir / "tables.md").write_text(report.markdown(result))
    click.echo(report.markdown(result))
    click.echo(
        f"{result['seconds']:.0f} s; wrote {out_dir / 'scaling.json'}, "
        f"{out_dir / 'scaling.png'}, {out_dir / 'tables.md'}",
        err=True,
    )


def warn_unused_results_server(result: dict[str, Any]) -> None:
    for key in ("curve", "saturation"):
        for p in result.get(key, []):
            calls = p["runs"][0]["redis"]["results"]["calls_per_item"]
            if calls < 1:
                click.echo(
                    f"warning: the results Redis saw {calls:.2f} calls/item in the {key} "
                    "series: this genq does not honour GENQ_RESULTS_URL yet",
                    err=True,
                )
                return


if __name__ == "__main__":
    main()
