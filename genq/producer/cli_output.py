"""What the ``genq`` command line prints: one-line errors and warnings on stderr, progress,
results, and rows (a table on a terminal, tab-separated lines on a pipe)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from genq.errors import BrokerUnavailableError
from genq.producer.cli_options import EXIT_FAILED
from genq.producer.client import Client, ResultFilter
from genq.schema import JobInfo, JobStatus
from genq.settings import WORKER_CHECK_INTERVAL_S

stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def print_error(message: object) -> None:
    stderr.print(Text.assemble(("error:", "red"), " ", str(message)))


def print_warning(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message))


def print_note(message: str) -> None:
    stderr.print(Text(message))


@contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    if path is None or path == "-":
        yield sys.stdout
    else:
        with open(path, "w", encoding="utf-8") as f:
            yield f


def write_results(
    client: Client, job_id: str, out: str | None, only: ResultFilter = ResultFilter.ALL
) -> int:
    client.status(job_id)  # an unknown job is an error before any output file is created
    count = 0
    with open_output(out) as f:
        for result in client.iter_results(job_id, only=only):
            f.write(result.model_dump_json() + "\n")
            count += 1
    return count


class WorkerWatch:
    """Whether no live worker consumes the client's queue, asked at most every
    WORKER_CHECK_INTERVAL_S (it reads every worker's record), not on every poll."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.checked_at = -math.inf
        self.idle = False

    def no_live_worker(self) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= WORKER_CHECK_INTERVAL_S:
            self.checked_at = now
            # The wait itself rides out an outage; the last answer stands meanwhile.
            with suppress(BrokerUnavailableError):
                self.idle = not self.client.queue_workers()
        return self.idle


@contextmanager
def job_progress(
    client: Client, job_id: str, check: Callable[[], None] | None = None
) -> Iterator[Callable[[JobInfo], None]]:
    """A progress bar for the job on stderr, fed by the ``on_progress`` callback yielded
    (``check`` runs on each status read first, and may raise to stop the wait)."""
    watch = WorkerWatch(client)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=stderr,
        transient=False,
    )
    # Shown from the first status read on: an unknown job is one error line, no empty bar.
    task = progress.add_task(job_id[:12], total=None, failed=0, note="", start=False)

    def on_progress(info: JobInfo) -> None:
        if check is not None:
            check()
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        idle = not info.is_terminal and watch.no_live_worker()
        progress.update(
            task,
            total=info.total,
            completed=info.done,
            failed=info.failed,
            description=f"{job_id[:12]} {info.status.value}",
            note="no live workers" if idle else "",
        )

    try:
        yield on_progress
    finally:
        if progress.live.is_started:
            progress.stop()


def progress_wait(
    client: Client, job_id: str, timeout_s: float | None, check: Callable[[], None] | None = None
) -> JobInfo:
    with job_progress(client, job_id, check) as on_progress:
        return client.wait(job_id, timeout_s, on_progress=on_progress)


def follow_to_output(
    client: Client,
    job_id: str,
    out: str | None,
    timeout_s: float | None,
    check: Callable[[], None] | None = None,
    only: ResultFilter = ResultFilter.ALL,
) -> tuple[JobInfo, int]:
    """Write the job's results (those ``only`` keeps) to ``out`` (None or '-': stdout) as
    they are written, in input order, under its progress bar; return its last status
    (ended) and how many results were written."""
    client.status(job_id)  # an unknown job is an error before any output file is created
    statuses: list[JobInfo] = []
    count = 0
    with job_progress(client, job_id, check) as on_progress, open_output(out) as f:

        def seen(info: JobInfo) -> None:
            on_progress(info)
            statuses[:] = [info]

        try:
            for result in client.follow_results(job_id, timeout_s, on_progress=seen):
                if only.keeps(result):
                    f.write(result.model_dump_json() + "\n")
                    count += 1
        except Exception:
            if count:
                print_note(f"{count} results written to {out} before it stopped (only those)")
            raise
    return statuses[-1], count


def finish(info: JobInfo) -> None:
    """Exit 1 unless the job completed; point at the failed items of one that did."""
    if info.status is not JobStatus.COMPLETED:
        reason = f": {info.error}" if info.error else ""
        print_error(f"job {info.id} ended {info.status.value}{reason}")
        sys.exit(EXIT_FAILED)
    if info.failed:
        print_note(
            f"{info.failed} of {info.total} items failed: `genq results {info.id} --failed` "
            f"shows them, `genq retry {info.id}` submits them again"
        )


def mean_batch_size(sizes: Mapping[int, int]) -> float | None:
    """Mean sequences per batch of a worker's ``batch_sizes`` histogram (None: no batch)."""
    batches = sum(sizes.values())
    return sum(k * v for k, v in sizes.items()) / batches if batches else None


def emit_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on a terminal; on a pipe or file, one tab-separated line per row, no header,
    nothing shortened (ids are whole, for `cut -f1 | xargs genq ...`)."""
    if sys.stdout.isatty():
        table = Table(*headers)
        first = table.columns[0]
        first.no_wrap = True
        first.min_width = max((len(row[0]) for row in rows), default=0)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        Console().print(table)
        return
    for row in rows:
        click.echo("\t".join(" ".join(cell.split()) if cell else "-" for cell in row))
