"""The ``genq`` command line: producer side; only ``worker`` and ``run`` load the worker, lazily."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genq import __version__
from genq.errors import ConfigError, GenqError, InvalidJobError, WaitTimeoutError
from genq.producer.client import Client, validate_job, with_job_options
from genq.producer.inputs import read_items
from genq.schema import JobInfo, JobSpec, JobStatus
from genq.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1  # a command failed, or the job ended without completing
EXIT_INVALID = 2  # invalid input: nothing was enqueued
EXIT_TIMEOUT = 124  # `wait --timeout` ran out; the job keeps running

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType[float]):
    """Seconds, or a number with a unit: 90, 90s, 30m, 2h, 1d."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> float:
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS_S else "s"
        number = text[:-1] if text[-1:] in _DURATION_UNITS_S else text
        try:
            seconds = float(number) * _DURATION_UNITS_S[unit]
        except ValueError:
            self.fail(f"{value!r} is not a duration (examples: 90, 90s, 30m, 2h, 1d)", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r}: a duration must be positive", param, ctx)
        return seconds


stderr = Console(stderr=True, soft_wrap=True)

GENERATION_OPTIONS: list[Callable[[F], F]] = [
    click.option("--max-new-tokens", type=int, help="New tokens per output [default: 64]."),
    click.option(
        "--max-length", type=int, help="Total length, prompt + new tokens (the seed tutorial's)."
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
        "--greedy", is_flag=True, default=None, help="Greedy decoding instead of sampling."
    ),
    click.option("--seed", type=int, help="Random seed for sampling."),
    click.option(
        "--truncate",
        is_flag=True,
        default=None,
        help="Drop the start of a prompt too long for the model instead of failing the item.",
    ),
    click.option(
        "--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Job metadata (repeatable)."
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
        "--max-batch-tokens", type=int, help="Padded tokens per batch [GENQ_MAX_BATCH_TOKENS]."
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
        except (InvalidJobError, ConfigError) as e:
            stderr.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
            ctx.exit(EXIT_INVALID)
        except GenqError as e:
            stderr.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
            ctx.exit(EXIT_FAILED)
        except OSError as e:  # e.g. -o into a directory that does not exist
            stderr.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
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
    """Submit bulk prompt jobs; GPU workers batch them through GPT-2."""
    ctx.obj = load_settings(**({"redis_url": redis_url} if redis_url else {}))


def _client(ctx: click.Context) -> Client:
    return Client(settings=ctx.find_object(Settings))


def _spec(settings: Settings, file: str, options: dict[str, Any]) -> JobSpec:
    """Read and validate the input file and the generation options (nothing is enqueued)."""
    fmt = options.pop("input_format")
    metadata = {}
    for pair in options.pop("metadata"):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidJobError(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
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


def _write_results(client: Client, job_id: str, out: str | None) -> int:
    count = 0
    with _output(out) as f:
        for result in client.iter_results(job_id):
            f.write(result.model_dump_json() + "\n")
            count += 1
    return count


def _progress_wait(
    client: Client, job_id: str, timeout_s: float | None, check: Callable[[], None] | None = None
) -> JobInfo:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    ) as progress:
        task = progress.add_task(job_id[:12], total=None, failed=0)

        def on_progress(info: JobInfo) -> None:
            if check is not None:
                check()
            progress.update(
                task,
                total=info.total,
                completed=info.done,
                failed=info.failed,
                description=f"{job_id[:12]} {info.status.value}",
            )

        return client.wait(job_id, timeout_s, on_progress=on_progress)


def _finish(info: JobInfo) -> None:
    if info.status is not JobStatus.COMPLETED:
        reason = f": {info.error}" if info.error else ""
        stderr.print(f"job {info.id} ended {info.status.value}{reason}", highlight=False)
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("file")
@apply(GENERATION_OPTIONS)
@click.option(
    "--wait", "wait_", is_flag=True, help="Wait for the job, with a progress bar on stderr."
)
@click.option("--timeout", type=float, help="With --wait: give up waiting after this many seconds.")
@click.option("-o", "--output", help="With --wait: write results (JSON Lines) here.")
@click.option(
    "--idempotency-key",
    help="Submitting again with the same key prints the first job's id and enqueues nothing.",
)
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
    idempotency_key: str | None,
    expires_in: float | None,
    **options: Any,
) -> None:
    """Validate FILE (.jsonl, .txt or - for stdin) and enqueue it; print the job id."""
    client = _client(ctx)
    spec = _spec(client.settings, file, options)
    spec = with_job_options(spec, idempotency_key=idempotency_key, expires_in_s=expires_in)
    job_id = client.submit_spec(spec)
    click.echo(job_id)
    if wait_ or output:
        try:
            info = _progress_wait(client, job_id, timeout)
        except WaitTimeoutError as e:
            stderr.print(str(e), highlight=False)
            sys.exit(EXIT_TIMEOUT)
        if output:
            _write_results(client, job_id, output)
        _finish(info)


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
@click.pass_context
def results(ctx: click.Context, job_id: str, output: str | None) -> None:
    """Print results as JSON Lines in input order (while running: those available)."""
    _write_results(_client(ctx), job_id, output)


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 124).")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait for a job with a progress bar; exit 0 only if it completed."""
    try:
        info = _progress_wait(_client(ctx), job_id, timeout)
    except WaitTimeoutError as e:
        stderr.print(str(e), highlight=False)
        sys.exit(EXIT_TIMEOUT)
    _finish(info)


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: its unstarted items are not generated; finished results stay readable."""
    info = _client(ctx).cancel(job_id)
    click.echo(f"{info.id}  {info.status.value}  {info.done}/{info.total} done")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def jobs(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    infos = _client(ctx).jobs(limit)
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    table = Table("id", "status", "done", "total", "failed", "created (UTC)")
    for info in infos:
        table.add_row(
            info.id,
            info.status.value,
            str(info.done),
            str(info.total),
            str(info.failed),
            f"{info.created_at:%Y-%m-%d %H:%M:%S}",
        )
    Console().print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """List live workers with their batch counters."""
    infos = _client(ctx).workers()
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    table = Table("id", "engine", "model", "device", "batches", "items", "tokens", "mean batch")
    for w in infos:
        mean = sum(k * v for k, v in w.batch_sizes.items()) / max(w.batches, 1)
        table.add_row(
            w.id,
            w.engine,
            w.model,
            w.device,
            str(w.batches),
            str(w.items),
            str(w.tokens),
            f"{mean:.1f}",
        )
    Console().print(table)


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
@click.option("--timeout", type=float, help="Give up after this many seconds.")
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
        stderr.print(f"embedded server at {url}; starting a worker", highlight=False)
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
            stderr.print(f"{count} results written to {output}", highlight=False)
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
