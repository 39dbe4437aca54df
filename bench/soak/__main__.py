"""`python -m bench.soak`: the command (see the package's docstring for what it proves)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from bench.soak.options import Options
from bench.soak.processes import stop_all
from bench.soak.report import chart, report, verify, write_json
from bench.soak.run import Soak, ensure_model
from genq.devtools.redis_server import RedisProcess, RedisServerError


@contextlib.contextmanager
def cleanup_on_exit(stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` however the soak ends: normally, on an exception, Ctrl-C or SIGTERM."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()


@click.command()
@click.option(
    "--items", type=int, default=10_000, show_default=True, help="Items, over all the jobs."
)
@click.option(
    "--jobs",
    type=int,
    default=1,
    show_default=True,
    help="Split the items into this many jobs: one large, the others smaller, priorities "
    "high/normal/low and tenants soak-a/soak-b (weight 2) in turn, the last one or two "
    "submitted during the run.",
)
@click.option("--workers", type=int, default=2, show_default=True, help="Workers kept running.")
@click.option(
    "--steady-workers",
    type=int,
    default=0,
    show_default=True,
    help="Extra workers never stopped: memory over a long life, under the same chaos.",
)
@click.option("--model", help="Model directory (default: a tiny random GPT-2, built here).")
@click.option("--lease-s", type=int, default=10, show_default=True, help="GENQ_LEASE_S.")
@click.option("--heartbeat-s", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--chunk-size", type=int, default=16, show_default=True, help="Items per message.")
@click.option(
    "--kill-every-s",
    type=float,
    default=10.0,
    show_default=True,
    help="Mean seconds between worker stops (each 0.5x-1.5x of it, at random).",
)
@click.option(
    "--sigterm-share",
    type=float,
    default=0.25,
    show_default=True,
    help="Share of worker stops that are SIGTERM (warm shutdown) rather than SIGKILL.",
)
@click.option(
    "--redis-at",
    type=float,
    default=0.5,
    show_default=True,
    help="Kill Redis once this share of the items is done.",
)
@click.option("--redis-down-s", type=float, default=3.0, show_default=True)
@click.option(
    "--term-grace-s",
    type=float,
    default=90.0,
    show_default=True,
    help="SIGKILL a worker still running this long after its SIGTERM.",
)
@click.option(
    "--torch-threads",
    type=int,
    help="OMP_NUM_THREADS per worker [CPUs / workers]; 0 leaves it unset.",
)
@click.option("--sample-s", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout-s", type=float, default=1200.0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="bench-out/soak",
    show_default=True,
)
def main(**kwargs: Any) -> None:
    """Run one big job (or --jobs of mixed priorities and tenants) while workers are killed
    at random and Redis restarts once."""
    out = Path(kwargs.pop("out"))
    if kwargs["torch_threads"] is None:
        kwargs["torch_threads"] = max(
            1, (os.cpu_count() or 1) // max(kwargs["workers"] + kwargs["steady_workers"], 1)
        )
    opts = Options(out=out, **kwargs)
    if opts.workers < 1 or opts.items < 1 or opts.jobs < 1:
        raise click.BadParameter("--items, --jobs and --workers must be at least 1")
    if opts.items < 2 * opts.jobs:
        raise click.BadParameter("--items must be at least twice --jobs")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out / "logs").glob("worker-*.log"):
        old.unlink()
    soak: Soak | None = None
    server: RedisProcess | None = None
    figures: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="genq-soak-") as scratch:
        try:
            with cleanup_on_exit(lambda: stop_all(soak.workers if soak else None, server)):
                model = ensure_model(opts.model, Path(scratch))
                log = out / "logs" / "redis.log"
                log.write_bytes(b"")
                server = RedisProcess(Path(scratch) / "redis", appendonly=True, log=log)
                server.start()
                click.echo(
                    f"{Path(server.binary).name} on port {server.port} (append-only)", err=True
                )
                soak = Soak(opts, server, model)
                soak.run()
                figures = verify(soak)  # while Redis is still up
        except RedisServerError as e:
            raise click.ClickException(str(e)) from e
        path = out / "soak.json"
        write_json(soak, figures, path)
        png = out / "rss.png"
        drew = chart(soak, png)
    report(figures)
    click.echo(f"\nwrote {path}" + (f" and {png}" if drew else ""), err=True)
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
