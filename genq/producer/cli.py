"""The ``genq`` command line: producer side; only ``worker`` and ``run`` load the worker, lazily.

Exit statuses, the same for every command: 0 ok; 1 a command failed, or the job ended without
completing; 2 invalid input or usage (nothing was enqueued); 3 no such job (unknown, vanished,
or a malformed id); 124 ``--timeout`` ran out while waiting (the job keeps running). Errors are
``error: ...`` on stderr, never a traceback; warnings are ``warning: ...`` on stderr: stdout
carries only what scripts read (a job id, JSON, results, tab-separated rows).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from genq import __version__
from genq.errors import (
    BrokerUnavailableError,
    ConfigError,
    GenqError,
    InvalidIdError,
    InvalidJobError,
    JobNotFoundError,
    WaitTimeoutError,
)
from genq.producer.client import (
    RETRY_OF,
    Client,
    ResultFilter,
    validate_job,
    with_job_options,
)
from genq.producer.inputs import read_items
from genq.schema import JobInfo, JobSpec, JobStatus
from genq.settings import WORKER_CHECK_INTERVAL_S, Settings, load_settings, redact_url
from genq.store import JobQuery

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1  # a command failed, or the job ended without completing
EXIT_INVALID = 2  # invalid input or usage: nothing was enqueued
EXIT_NO_SUCH_JOB = 3  # the job id names no job (or is not a job id at all)
EXIT_TIMEOUT = 124  # `--timeout` ran out while waiting; the job keeps running

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType[float]):
    """Seconds, or a number with a unit: 90, 90s, 30m, 2h, 1d."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS_S else "s"
        number = text[:-1] if text[-1:] in _DURATION_UNITS_S else text
        try:
            seconds = float(number) * _DURATION_UNITS_S[unit]
        except ValueError:
            self.fail(f"{value!r} is not a duration (examples: 90, 90s, 30m, 2h, 1d)", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: a duration must be positive", param, ctx)
        return seconds


class KeyValue(click.ParamType[tuple[str, str]]):
    """``KEY=VALUE`` (the value may hold ``=``; the key may not be empty)."""

    name = "key=value"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        key, sep, rest = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r}: expected KEY=VALUE", param, ctx)
        return key, rest


stderr = Console(stderr=True, soft_wrap=True, highlight=False)


def _error(message: object) -> None:
    stderr.print(Text.assemble(("error:", "red"), " ", str(message)))


def _warn(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message))


def _note(message: str) -> None:
    stderr.print(Text(message))


GENERATION_OPTIONS: list[Callable[[F], F]] = [
    click.option("--max-new-tokens", type=int, help="New tokens per output [default: 64]."),
    click.option(
        "--max-length",
        type=int,
        help="Total length, prompt + new tokens (the seed tutorial's); instead of "
        "--max-new-tokens.",
    ),
    click.option("--temperature", type=float, help="Sampling temperature [default: 1.0]."),
    click.option(
        "--top-k", type=int, help="Sample from the k most likely tokens (0: off) [default: 50]."
    ),
    click.option("--top-p", type=float, help="Nucleus sampling threshold [default: 0.95]."),
    click.option("--num-return-sequences", "-n", type=int, help="Outputs per prompt [default: 1]."),
    click.option(
        "--repetition-penalty", type=float, help="Penalty for repeated tokens [default: 1.0]."
    ),
    click.option(
        "--stop", multiple=True, help="Stop string (repeatable); not included in the output."
    ),
    click.option(
        "--greedy",
        is_flag=True,
        default=None,
        help="Greedy decoding instead of sampling (temperature, top-k and top-p unused).",
    ),
    click.option("--seed", type=int, help="Random seed for sampling."),
    click.option(
        "--truncate",
        is_flag=True,
        default=None,
        help="Drop the start of a prompt too long for the model instead of failing the item.",
    ),
    click.option(
        "--metadata",
        "-m",
        type=KeyValue(),
        multiple=True,
        metavar="KEY=VALUE",
        help="Job metadata, kept in the job's record (repeatable).",
    ),
    click.option(
        "--format",
        "input_format",
        type=click.Choice(["auto", "jsonl", "txt"]),
        default="auto",
        show_default=True,
        help="Input format (auto: by file suffix or content).",
    ),
]

WORKER_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--max-batch-size", type=int, help="Sequences per forward pass [GENQ_MAX_BATCH_SIZE]."
    ),
    click.option(
        "--max-wait-ms",
        type=int,
        help="Longest a prompt waits for batch neighbours [GENQ_MAX_WAIT_MS].",
    ),
    click.option(
        "--max-batch-tokens",
        type=int,
        help="Padded tokens (rows x (prompt + new)) per batch [GENQ_MAX_BATCH_TOKENS].",
    ),
    click.option("--model", help="Model directory or Hugging Face id [GENQ_MODEL]."),
    click.option("--device", help="auto | cpu | cuda | cuda:N [GENQ_DEVICE]."),
    click.option(
        "--engine",
        type=click.Choice(["hf", "ct2", "null"]),
        help="Generation engine [GENQ_ENGINE].",
    ),
    click.option(
        "--batching",
        type=click.Choice(["continuous", "static"]),
        help="Continuous (rows join and leave a running batch) or static [GENQ_BATCHING].",
    ),
]

SUBMIT_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--wait",
        "wait_",
        is_flag=True,
        help="Wait for the job, with a progress bar on stderr; exit status as `genq wait`.",
    ),
    click.option(
        "--timeout",
        type=Duration(),
        help="With --wait or -o: stop waiting after this long (90, 30m, 2h; exit 124); "
        "the job keeps running.",
    ),
    click.option(
        "-o",
        "--output",
        help="Wait for the job and write its results (JSON Lines) here ('-': stdout).",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the job as submitted (one JSON object, with its id) instead of the id alone.",
    ),
    click.option(
        "--idempotency-key",
        help="Repeating the command with the same key prints the first job's id and enqueues "
        "nothing.",
    ),
]


def apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


class GenqGroup(click.Group):
    """Shows genq's errors as one clear line and an exit status, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "genq"
            _error(f"{e.format_message()} (see `{where} --help`)")
            ctx.exit(EXIT_INVALID)
        except (JobNotFoundError, InvalidIdError) as e:
            _error(e)
            ctx.exit(EXIT_NO_SUCH_JOB)
        except (InvalidJobError, ConfigError) as e:
            _error(e)
            ctx.exit(EXIT_INVALID)
        except WaitTimeoutError as e:
            _error(e)
            ctx.exit(EXIT_TIMEOUT)
        except GenqError as e:
            _error(e)
            ctx.exit(EXIT_FAILED)
        except redis.exceptions.RedisError as e:  # one genq does not explain: say what it was
            _error(f"Redis: {type(e).__name__}: {e}")
            ctx.exit(EXIT_FAILED)
        except BrokenPipeError:  # `genq results JOB | head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)
        except OSError as e:  # e.g. -o into a directory that does not exist
            _error(e)
            ctx.exit(EXIT_FAILED)


@click.group(cls=GenqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genq")
@click.option(
    "--redis-url",
    envvar="GENQ_REDIS_URL",
    help="Redis URL [GENQ_REDIS_URL, default redis://localhost:6379/0].",
)
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None) -> None:
    """Submit bulk prompt jobs; GPU workers batch them through GPT-2.

    Exit status: 0 ok; 1 failed, or the job ended without completing; 2 invalid input
    (nothing enqueued); 3 no such job; 124 --timeout ran out.
    """
    ctx.obj = load_settings(**({"redis_url": redis_url} if redis_url else {}))


def _client(ctx: click.Context) -> Client:
    return Client(settings=ctx.find_object(Settings))


def _spec(settings: Settings, file: str, options: dict[str, Any]) -> JobSpec:
    """Read and validate the input file and the generation options (nothing is enqueued)."""
    fmt = options.pop("input_format")
    metadata = dict(options.pop("metadata"))
    greedy = options.pop("greedy")
    params = {k: v for k, v in options.items() if v is not None and v != ()}
    if greedy:
        params["do_sample"] = False
    items, labels = read_items(file, settings.max_input_file_bytes, fmt)
    return validate_job(items, params, settings, metadata=metadata, labels=labels)


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None or path == "-":
        yield sys.stdout
    else:
        with open(path, "w", encoding="utf-8") as f:
            yield f


def _write_results(
    client: Client, job_id: str, out: str | None, only: ResultFilter = ResultFilter.ALL
) -> int:
    client.status(job_id)  # an unknown job is an error before any output file is created
    count = 0
    with _output(out) as f:
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


def _progress_wait(
    client: Client, job_id: str, timeout_s: float | None, check: Callable[[], None] | None = None
) -> JobInfo:
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
        return client.wait(job_id, timeout_s, on_progress=on_progress)
    finally:
        if progress.live.is_started:
            progress.stop()


def _finish(info: JobInfo) -> None:
    """Exit 1 unless the job completed; point at the failed items of one that did."""
    if info.status is not JobStatus.COMPLETED:
        reason = f": {info.error}" if info.error else ""
        _error(f"job {info.id} ended {info.status.value}{reason}")
        sys.exit(EXIT_FAILED)
    if info.failed:
        _note(
            f"{info.failed} of {info.total} items failed: `genq results {info.id} --failed` "
            f"shows them, `genq retry {info.id}` submits them again"
        )


@dataclass(frozen=True)
class Follow:
    """What to do once a job is submitted: how to print it, and whether to wait for it."""

    as_json: bool
    wait: bool
    timeout_s: float | None
    output: str | None


def _submitted(client: Client, job_id: str, follow: Follow) -> None:
    """Print the new job (id, or JSON), warn about what would keep it from running, and wait
    for it when asked."""
    click.echo(client.status(job_id).model_dump_json() if follow.as_json else job_id)
    _submit_warnings(client)
    if follow.wait or follow.output:
        info = _progress_wait(client, job_id, follow.timeout_s)
        if follow.output:
            _write_results(client, job_id, follow.output)
        _finish(info)


def _submit_warnings(client: Client) -> None:
    """Warnings about a job just accepted; never a reason for a successful submit to fail."""
    try:
        idle = not client.queue_workers()
        no_aof = client.claim_no_append_only_notice()
    except GenqError:
        return
    if idle:
        _warn(
            f"no live worker consumes queue {client.settings.queue!r}; "
            "the job waits until one starts (genq worker)"
        )
    if no_aof:
        _warn(
            f"Redis at {redact_url(client.settings.redis_url)} has no append-only file: "
            "accepted jobs are lost if it restarts (appendonly yes)"
        )


def _emit_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
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


@cli.command()
@click.argument("file")
@apply(GENERATION_OPTIONS)
@apply(SUBMIT_OPTIONS)
@click.option(
    "--expires-in",
    type=Duration(),
    help="Deadline (90s, 30m, 2h, 1d): items not generated by then end as expired.",
)
@click.pass_context
def submit(
    ctx: click.Context,
    /,
    file: str,
    wait_: bool,
    timeout: float | None,
    output: str | None,
    as_json: bool,
    idempotency_key: str | None,
    expires_in: float | None,
    **options: Any,
) -> None:
    """Validate FILE (.jsonl, .txt or - for stdin) and enqueue it; print the job id.

    Warns on stderr when no live worker consumes the queue, and (once per Redis) when Redis
    keeps no append-only file.
    """
    client = _client(ctx)
    spec = _spec(client.settings, file, options)
    spec = with_job_options(spec, idempotency_key=idempotency_key, expires_in_s=expires_in)
    job_id = client.submit_spec(spec)
    _submitted(client, job_id, Follow(as_json, wait_, timeout, output))


@cli.command()
@click.argument("job_id")
@apply(SUBMIT_OPTIONS)
@click.pass_context
def retry(
    ctx: click.Context,
    /,
    job_id: str,
    wait_: bool,
    timeout: float | None,
    output: str | None,
    as_json: bool,
    idempotency_key: str | None,
) -> None:
    """Submit JOB_ID's failed items again as a new job; print its id.

    Same prompts, custom_ids and per-item params, the job's default params and metadata, plus
    metadata retry_of=JOB_ID. Items that have no result (a cancelled job's items that never
    started) cannot be retried. JOB_ID must have ended; with no failed items, nothing is
    submitted and nothing printed on stdout (exit 0).
    """
    client = _client(ctx)
    info = client.status(job_id)
    new_id = client.retry(job_id, idempotency_key=idempotency_key)
    if info.pending:
        _note(
            f"{info.pending} item(s) of job {job_id} ({info.status.value}) have no result "
            "(never started) and cannot be retried"
        )
    if new_id is None:
        _note(f"job {job_id} has no failed items: nothing to retry")
        return
    _note(f"{info.failed} failed item(s) of job {job_id} submitted again ({RETRY_OF}={job_id})")
    _submitted(client, new_id, Follow(as_json, wait_, timeout, output))


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's status and counters."""
    info = _client(ctx).status(job_id)
    if as_json:
        click.echo(info.model_dump_json())
        return
    click.echo(
        f"{info.id}  {info.status.value}  {info.done}/{info.total} done "
        f"({info.completed} completed, {info.failed} failed)  "
        f"created {info.created_at:%Y-%m-%d %H:%M:%S}Z"
        + (f"  finished {info.finished_at:%H:%M:%S}Z" if info.finished_at else "")
        + (
            f"  expires {info.expires_at:%Y-%m-%d %H:%M:%S}Z"
            if info.expires_at and not info.is_terminal
            else ""
        )
        + (f"\nerror: {info.error}" if info.error else "")
    )


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", help="Write to this file instead of stdout.")
@click.option("--failed", is_flag=True, help="Only items that ended with an error.")
@click.option("--ok", is_flag=True, help="Only items that ended without an error.")
@click.pass_context
def results(ctx: click.Context, job_id: str, output: str | None, failed: bool, ok: bool) -> None:
    """Print results as JSON Lines in input order (while running: those available)."""
    if failed and ok:
        raise click.UsageError("--failed and --ok exclude each other", ctx)
    only = ResultFilter.FAILED if failed else ResultFilter.OK if ok else ResultFilter.ALL
    _write_results(_client(ctx), job_id, output, only)


@cli.command()
@click.argument("job_id")
@click.option(
    "--timeout",
    type=Duration(),
    help="Give up after this long (90, 30m, 2h; exit 124); the job keeps running.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final status as one JSON object.")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a job with a progress bar on stderr; exit 0 only if it completed.

    The progress line says "no live workers" while no live worker consumes the queue
    (GENQ_QUEUE).
    """
    info = _progress_wait(_client(ctx), job_id, timeout)
    if as_json:
        click.echo(info.model_dump_json())
    _finish(info)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's status as one JSON object.")
@click.pass_context
def cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a job: its unstarted items are not generated; finished results stay readable."""
    info = _client(ctx).cancel(job_id)
    if as_json:
        click.echo(info.model_dump_json())
        return
    click.echo(f"{info.id}  {info.status.value}  {info.done}/{info.total} done")


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Show at most this many jobs.",
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice([s.value for s in JobStatus]),
    multiple=True,
    help="Only jobs in this status (repeatable: any of them).",
)
@click.option(
    "--metadata",
    "-m",
    type=KeyValue(),
    multiple=True,
    metavar="KEY=VALUE",
    help="Only jobs with this metadata (repeatable: all of them).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def jobs(
    ctx: click.Context,
    limit: int,
    statuses: tuple[str, ...],
    metadata: tuple[tuple[str, str], ...],
    as_json: bool,
) -> None:
    """List recent jobs, newest first (with filters: among the newest 100,000).

    On a terminal, a table; otherwise one tab-separated line per job: id, status, done,
    total, failed, created (UTC), metadata.
    """
    query = JobQuery(frozenset(JobStatus(s) for s in statuses), dict(metadata))
    infos = _client(ctx).find_jobs(query, limit)
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    _emit_rows(
        ("id", "status", "done", "total", "failed", "created (UTC)", "metadata"),
        [
            (
                info.id,
                info.status.value,
                str(info.done),
                str(info.total),
                str(info.failed),
                f"{info.created_at:%Y-%m-%d %H:%M:%S}",
                ",".join(f"{k}={v}" for k, v in info.metadata.items()),
            )
            for info in infos
        ],
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """List live workers with their batch counters.

    On a terminal, a table; otherwise one tab-separated line per worker: id, queue, engine,
    model, device, batches, items, tokens, mean batch.
    """
    infos = _client(ctx).workers()
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    rows = []
    for w in infos:
        mean = sum(k * v for k, v in w.batch_sizes.items()) / max(w.batches, 1)
        rows.append(
            (
                w.id,
                w.queue,
                w.engine,
                w.model,
                w.device,
                str(w.batches),
                str(w.items),
                str(w.tokens),
                f"{mean:.1f}",
            )
        )
    headers = ("id", "queue", "engine", "model", "device", "batches", "items", "tokens")
    _emit_rows((*headers, "mean batch"), rows)


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Show at most this many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--purge", is_flag=True, help="Delete every dead letter instead, and say how many there were."
)
@click.pass_context
def dead(ctx: click.Context, limit: int, as_json: bool, purge: bool) -> None:
    """List dead letters: queue messages no worker could use, with why, newest first.

    On a terminal, a table; otherwise one tab-separated line per message: time (UTC), reason,
    job, size in bytes.
    """
    client = _client(ctx)
    if purge:
        count = client.purge_dead_letters()
        click.echo(f'{{"purged": {count}}}' if as_json else f"purged {count} dead letter(s)")
        return
    letters = client.dead_letters(0, limit)
    if as_json:
        for letter in letters:
            click.echo(letter.model_dump_json())
    else:
        _emit_rows(
            ("time (UTC)", "reason", "job", "size"),
            [
                (
                    f"{letter.at:%Y-%m-%d %H:%M:%S}",
                    letter.reason,
                    letter.job_id or "",
                    str(letter.message_bytes),
                )
                for letter in letters
            ],
        )
    total = client.dead_letter_count()
    if total > len(letters):
        _note(f"{len(letters)} of {total} dead letters shown (--limit)")
    elif not letters:
        _note("no dead letters")


def _worker_settings(settings: Settings, options: dict[str, Any]) -> Settings:
    updates = {k: v for k, v in options.items() if v is not None}
    return load_settings(**{"redis_url": settings.redis_url, **updates})


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@apply(WORKER_OPTIONS)
@click.pass_context
def worker(ctx: click.Context, /, **options: Any) -> None:
    """Run a worker (one per GPU). Other options go to `celery worker`, e.g. --loglevel=DEBUG."""
    from genq.worker.app import run_worker

    run_worker(_worker_settings(ctx.find_object(Settings), options), ctx.args)  # type: ignore[arg-type]


@cli.command()
@click.argument("file")
@click.option("-o", "--output", required=True, help="Write results (JSON Lines) here.")
@apply(GENERATION_OPTIONS)
@apply(WORKER_OPTIONS)
@click.option(
    "--timeout",
    type=Duration(),
    help="Give up after this long (90, 30m, 2h; exit 124); the embedded server and the job go.",
)
@click.pass_context
def run(
    ctx: click.Context, /, file: str, output: str, timeout: float | None, **options: Any
) -> None:
    """Do a whole job on this machine: embedded server, one worker, progress bar; no Redis."""
    from genq.producer.embedded import WorkerProcess, embedded_redis, scratch_dir

    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    worker_opts = {k: options.pop(k) for k in list(options) if k in _WORKER_KEYS}
    spec = _spec(settings, file, options)
    worker_args = [f"--{k.replace('_', '-')}={v}" for k, v in worker_opts.items() if v is not None]
    with scratch_dir() as tmp, embedded_redis(Path(tmp) / "data") as url:
        _note(f"embedded server at {url}; starting a worker")
        proc = WorkerProcess(url, worker_args, Path(tmp))
        try:
            client = Client(settings=settings.model_copy(update={"redis_url": url}))
            job_id = client.submit_spec(spec)

            def check_worker() -> None:
                if not proc.alive():
                    raise GenqError(
                        f"the worker exited (status {proc.process.returncode}):\n{proc.log_tail()}"
                    )

            info = _progress_wait(client, job_id, timeout, check_worker)
            count = _write_results(client, job_id, output)
            _note(f"{count} results written to {output}")
        finally:
            proc.stop()
    _finish(info)


_WORKER_KEYS = {
    "max_batch_size",
    "max_wait_ms",
    "max_batch_tokens",
    "model",
    "device",
    "engine",
    "batching",
}


@cli.command("random-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False),
    help="Tokenizer directory to use (default: train a small one on the fly).",
)
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small", "gpt2"]),
    default="small",
    show_default=True,
    help="tiny: 2x64; small: 4x256; gpt2: GPT-2 124M (GPT2Config defaults).",
)
def random_model(directory: str, tokenizer: str | None, preset: str) -> None:
    """Save a GPT-2 with random weights (for trying genq where no weights can be downloaded)."""
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    path = build_random_gpt2(Path(directory), PRESETS[preset], tokenizer_dir=tokenizer)
    click.echo(str(path))


def main() -> None:
    cli(prog_name="genq")


if __name__ == "__main__":  # pragma: no cover
    main()
