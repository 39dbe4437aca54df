"""``genq top``: a live view of the workers, the work waiting per priority and the unfinished
jobs, read from Redis alone (no Prometheus).

Rates (tokens/s, items/s, utilisation, ETA) are the growth of counters between two samples:
the live view compares each frame with the one before; ``--once`` takes two samples
``--interval`` apart and prints one frame (``--json``: the same data as one JSON object)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from genq.errors import BrokerUnavailableError
from genq.feeder import QueueView
from genq.producer.cli_options import client_from, limit_option
from genq.producer.cli_output import mean_batch_size
from genq.producer.client import Client
from genq.schema import PRIORITIES, UNFINISHED, JobInfo, WorkerInfo
from genq.settings import redact_url
from genq.submissions import JobQuery

# A heartbeat this many periods old is shown stale (at WORKER_TTL_FACTOR = 3 the worker is gone).
STALE_AFTER_BEATS = 2
PIPE_WIDTH = 200  # columns of a frame printed to a pipe or file (COLUMNS overrides)


@dataclass(frozen=True)
class Sample:
    """One read of everything a frame shows (``at``: wall-clock time of the read)."""

    at: float
    workers: dict[str, WorkerInfo]
    queue: QueueView
    jobs: list[JobInfo]


def take_sample(client: Client, limit: int) -> Sample:
    """Read the live workers, the waiting work and the newest ``limit`` unfinished jobs."""
    at = time.time()
    workers = {w.id: w for w in client.workers()}
    jobs = client.jobs(limit, JobQuery(frozenset(UNFINISHED)))
    return Sample(at, workers, client.queue(), jobs)


def _rate(now: float, before: float | None, dt: float) -> float | None:
    return None if before is None or dt <= 0 else max(now - before, 0.0) / dt


def _worker(
    w: WorkerInfo, old: WorkerInfo | None, dt: float, at: float, hb: float
) -> dict[str, Any]:
    recent = None
    if old is not None:
        grown = {k: v - old.batch_sizes.get(k, 0) for k, v in w.batch_sizes.items()}
        recent = mean_batch_size({k: v for k, v in grown.items() if v > 0})
    busy = _rate(w.busy_s, old.busy_s if old else None, dt)
    age = max(at - w.last_seen.timestamp(), 0.0)
    return {
        "id": w.id,
        "hostname": w.hostname,
        "queue": w.queue,
        "engine": w.engine,
        "device": w.device,
        "model": w.model,
        "max_batch_size": w.max_batch_size,
        "mean_batch": mean_batch_size(w.batch_sizes),
        "recent_mean_batch": recent,
        "tokens_per_s": _rate(w.tokens, old.tokens if old else None, dt),
        "items_per_s": _rate(w.items, old.items if old else None, dt),
        "utilisation": None if busy is None else min(busy, 1.0),
        "batches": w.batches,
        "items": w.items,
        "tokens": w.tokens,
        "busy_s": w.busy_s,
        "heartbeat_age_s": age,
        "stale": age > STALE_AFTER_BEATS * hb,
    }


def _job(info: JobInfo, old: JobInfo | None, dt: float) -> dict[str, Any]:
    rate = _rate(info.done, old.done if old else None, dt)
    return {
        "id": info.id,
        "status": info.status.value,
        "priority": info.priority.value,
        "tenant": info.tenant,
        "total": info.total,
        "done": info.done,
        "completed": info.completed,
        "failed": info.failed,
        "items_per_s": rate,
        "eta_s": info.pending / rate if rate else None,
    }


def build_frame(prev: Sample | None, cur: Sample, queue: str, heartbeat_s: float) -> dict[str, Any]:
    """What one frame shows, as plain data (the ``--json`` object); rates need ``prev``."""
    dt = cur.at - prev.at if prev is not None else 0.0
    old_workers = prev.workers if prev is not None else {}
    old_jobs = {j.id: j for j in prev.jobs} if prev is not None else {}
    view = cur.queue
    return {
        "at": cur.at,
        "interval_s": dt,
        "queue": queue,
        "workers": [
            _worker(w, old_workers.get(w.id), dt, cur.at, heartbeat_s) for w in cur.workers.values()
        ],
        "waiting": {
            "ready_messages": view.ready_messages,
            "priorities": [
                {
                    "priority": p.value,
                    "jobs": sum(1 for j in view.jobs if j.priority is p),
                    "items": view.items_at(p),
                }
                for p in PRIORITIES
            ],
        },
        "jobs": [_job(j, old_jobs.get(j.id), dt) for j in cur.jobs],
    }


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(*headers: str, first_width: int) -> Table:
    table = Table(*headers, box=None, pad_edge=False, header_style="bold")
    table.columns[0].no_wrap = True  # ids whole, as `genq workers` prints them
    table.columns[0].min_width = first_width
    return table


def _workers_view(workers: list[dict[str, Any]]) -> RenderableType:
    if not workers:
        return Text("no live workers (start one: genq worker)", style="yellow")
    table = _table(
        "worker", "host", "engine/device", "batch", "tok/s", "items/s", "util", "items",
        "heartbeat", first_width=max(len(w["id"]) for w in workers),
    )  # fmt: skip
    for w in workers:
        mean = w["recent_mean_batch"] if w["recent_mean_batch"] is not None else w["mean_batch"]
        util = w["utilisation"]
        heartbeat = _duration(w["heartbeat_age_s"]) + (" stale" if w["stale"] else "")
        table.add_row(
            w["id"],
            w["hostname"],
            f"{w['engine']}/{w['device']}",
            f"{_num(mean, '.1f')}/{w['max_batch_size']}",
            _num(w["tokens_per_s"]),
            _num(w["items_per_s"]),
            "-" if util is None else f"{util:.0%}",
            str(w["items"]),
            Text(heartbeat, style="red" if w["stale"] else ""),
            style="dim" if w["stale"] else None,
        )
    return table


def _waiting_view(waiting: dict[str, Any]) -> RenderableType:
    table = _table("priority", "jobs", "items waiting", first_width=8)
    for level in waiting["priorities"]:
        table.add_row(level["priority"], str(level["jobs"]), str(level["items"]))
    ready = Text(f"{waiting['ready_messages']} message(s) ready for workers")
    if not any(level["jobs"] for level in waiting["priorities"]):
        ready.append("; nothing else waiting")
    return Group(table, ready)


def _jobs_view(jobs: list[dict[str, Any]]) -> RenderableType:
    if not jobs:
        return Text("no queued or running jobs")
    table = _table(
        "job", "status", "priority", "tenant", "progress", "done/total", "failed", "items/s",
        "eta", first_width=max(len(j["id"]) for j in jobs),
    )  # fmt: skip
    table.columns[5].no_wrap = True
    for j in jobs:
        table.add_row(
            j["id"],
            j["status"],
            j["priority"],
            j["tenant"] or "-",
            ProgressBar(total=max(j["total"], 1), completed=j["done"], width=24),
            f"{j['done']}/{j['total']} {j['done'] * 100 // max(j['total'], 1)}%",
            str(j["failed"]),
            _num(j["items_per_s"]),
            _duration(j["eta_s"]),
        )
    return table


def render(frame: dict[str, Any], url: str, note: str = "") -> RenderableType:
    """One frame as rich renderables: a header line, then workers, waiting work and jobs."""
    workers = frame["workers"]
    tokens = sum(w["tokens_per_s"] or 0 for w in workers)
    items = sum(w["items_per_s"] or 0 for w in workers)
    when = datetime.fromtimestamp(frame["at"], tz=timezone.utc)
    header = Text.assemble(
        ("genq top", "bold"),
        f"  {when:%H:%M:%S}Z  {redact_url(url)}  queue {frame['queue']!r}  ",
        f"{len(workers)} worker(s): {tokens:.0f} tok/s, {items:.0f} items/s "
        f"over {frame['interval_s']:.1f}s",
    )
    if note:
        header.append(f"  {note}", style="red")
    parts: list[RenderableType] = [header, Text()]
    parts += [_workers_view(workers), Text(), Text("waiting", style="bold")]
    parts += [_waiting_view(frame["waiting"]), Text(), _jobs_view(frame["jobs"])]
    return Group(*parts)


@click.command()
@click.option(
    "--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
    help="Seconds between samples: the live view's refresh, --once's rate window.",
)  # fmt: skip
@click.option("--once", is_flag=True, help="Print one frame (two samples apart) and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: one JSON object instead.")
@limit_option("Show at most this many unfinished jobs, newest first.")
@click.pass_context
def top(ctx: click.Context, interval: float, once: bool, as_json: bool, limit: int) -> None:
    """Watch workers, waiting work and unfinished jobs live (Ctrl-C quits).

    Workers: batch size (recent mean sequences per batch / max), tokens/s, items/s,
    utilisation (share of wall time spent in batches), items done, heartbeat age (a worker
    that missed two beats is shown stale; at three it is gone). Waiting work per priority on
    GENQ_QUEUE. Jobs: progress, rate and ETA. Rates are the counters' growth between two
    samples. --once prints one frame to stdout (no live screen: for pipes and scripts),
    --json as one JSON object.
    """
    if as_json and not once:
        raise click.UsageError("--json needs --once", ctx)
    if not once and not sys.stdout.isatty():
        raise click.UsageError("the live view needs a terminal; on a pipe use --once", ctx)
    client = client_from(ctx)
    settings = client.settings
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    prev = take_sample(client, limit)
    if once:
        time.sleep(interval)
        frame = build_frame(prev, take_sample(client, limit), settings.queue, settings.heartbeat_s)
        if as_json:
            click.echo(json.dumps(frame, separators=(",", ":")))
        else:
            console.print(render(frame, settings.redis_url))
        return
    _live(client, console, prev, interval, limit)


def _live(client: Client, console: Console, prev: Sample, interval: float, limit: int) -> None:
    """Refresh a full-screen frame every ``interval`` s until Ctrl-C; rides out Redis outages
    (the last frame stays, with the error, until Redis answers again)."""
    settings = client.settings
    frame = build_frame(None, prev, settings.queue, settings.heartbeat_s)
    with Live(console=console, screen=True, auto_refresh=False) as live:
        live.update(render(frame, settings.redis_url), refresh=True)
        try:
            while True:
                time.sleep(interval)
                try:
                    cur = take_sample(client, limit)
                except BrokerUnavailableError as e:
                    live.update(render(frame, settings.redis_url, str(e)), refresh=True)
                    continue
                frame = build_frame(prev, cur, settings.queue, settings.heartbeat_s)
                live.update(render(frame, settings.redis_url), refresh=True)
                prev = cur
        except KeyboardInterrupt:
            return
