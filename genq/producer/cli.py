"""The ``genq`` command line: producer side; only ``worker`` and ``run`` load the worker, lazily.

Exit statuses, the same for every command: 0 ok; 1 a command failed, or the job ended without
completing; 2 invalid input or usage (nothing was enqueued); 3 no such job (unknown, vanished,
or a malformed id); 75 refused for now by a tenant quota (nothing was enqueued; try again
later); 124 ``--timeout`` ran out while waiting (the job keeps running). Errors are
``error: ...`` on stderr, never a traceback; warnings are ``warning: ...`` on stderr: stdout
carries only what scripts read (a job id, JSON, results, tab-separated rows).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import redis

from genq import __version__
from genq.errors import (
    ConfigError,
    GenqError,
    InvalidIdError,
    InvalidJobError,
    JobNotFoundError,
    MissingExtraError,
    QuotaExceededError,
    WaitTimeoutError,
)
from genq.producer.cli_inspect import dead, jobs, workers
from genq.producer.cli_options import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NO_SUCH_JOB,
    EXIT_TIMEOUT,
    GENERATION_OPTIONS,
    SCHEDULING_OPTIONS,
    WORKER_OPTIONS,
    Duration,
    OutputFile,
    apply,
    client_from,
)
from genq.producer.cli_output import (
    finish,
    follow_to_output,
    print_error,
    print_note,
    progress_wait,
    write_results,
)
from genq.producer.cli_queue import queue, tenants
from genq.producer.cli_serve import api
from genq.producer.cli_submit import read_spec, retry, submit, tenant_record
from genq.producer.cli_top import top
from genq.producer.client import Client, ResultFilter
from genq.producer.validation import with_job_options
from genq.settings import Settings, load_settings


class GenqGroup(click.Group):
    """Shows genq's errors as one clear line and an exit status, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "genq"
            print_error(f"{e.format_message()} (see `{where} --help`)")
            ctx.exit(EXIT_INVALID)
        except (JobNotFoundError, InvalidIdError) as e:
            print_error(e)
            ctx.exit(EXIT_NO_SUCH_JOB)
        except (InvalidJobError, ConfigError) as e:
            print_error(e)
            ctx.exit(EXIT_INVALID)
        except WaitTimeoutError as e:
            print_error(e)
            ctx.exit(EXIT_TIMEOUT)
        except QuotaExceededError as e:
            print_error(e)
            ctx.exit(EXIT_BUSY)
        except GenqError as e:
            print_error(e)
            ctx.exit(EXIT_FAILED)
        except redis.exceptions.RedisError as e:  # one genq does not explain: say what it was
            print_error(f"Redis: {type(e).__name__}: {e}")
            ctx.exit(EXIT_FAILED)
        except BrokenPipeError:  # `genq results JOB | head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)
        except OSError as e:  # e.g. -o into a directory that does not exist
            print_error(e)
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
    (nothing enqueued); 3 no such job; 75 over a tenant quota (nothing enqueued, try again
    later); 124 --timeout ran out.
    """
    ctx.obj = load_settings(**({"redis_url": redis_url} if redis_url else {}))


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's status and counters, its priority, and its place: its items not yet
    handed to workers, and the items of more urgent jobs that go before them."""
    client = client_from(ctx)
    info = client.status(job_id)
    place = None if info.is_terminal else client.queue()
    pending = place.pending_items(job_id) if place else 0
    ahead = place.ahead_of(job_id) if place else None
    if as_json:
        record = json.loads(info.model_dump_json())
        record["place"] = {"pending_items": pending, "items_ahead": ahead}
        click.echo(json.dumps(record, separators=(",", ":")))
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
        + f"\npriority {info.priority.value}"
        + (f", tenant {info.tenant}" if info.tenant else "")
        + (
            f"; {pending} item(s) wait to be handed to workers, behind {ahead} item(s) of more "
            "urgent jobs"
            if ahead is not None
            else ""
        )
    )


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", help="Write to this file instead of stdout.")
@click.option("--failed", is_flag=True, help="Only items that ended with an error.")
@click.option("--ok", is_flag=True, help="Only items that ended without an error.")
@click.option(
    "--follow",
    is_flag=True,
    help="Go on while the job runs, writing each result as it comes (progress on stderr); "
    "exit status as `genq wait`.",
)
@click.option(
    "--timeout",
    type=Duration(),
    help="With --follow: stop after this long (exit 124); the job keeps running.",
)
@click.pass_context
def results(
    ctx: click.Context,
    /,
    job_id: str,
    output: str | None,
    failed: bool,
    ok: bool,
    follow: bool,
    timeout: float | None,
) -> None:
    """Print results as JSON Lines in input order (while running: those available, or with
    --follow every one as it comes, until the job ends)."""
    if failed and ok:
        raise click.UsageError("--failed and --ok exclude each other", ctx)
    if timeout is not None and not follow:
        raise click.UsageError("--timeout goes with --follow", ctx)
    only = ResultFilter.FAILED if failed else ResultFilter.OK if ok else ResultFilter.ALL
    client = client_from(ctx)
    if follow:
        info, _ = follow_to_output(client, job_id, output, timeout, only=only)
        finish(info)
    else:
        write_results(client, job_id, output, only)


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
    info = progress_wait(client_from(ctx), job_id, timeout)
    if as_json:
        click.echo(info.model_dump_json())
    finish(info)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's status as one JSON object.")
@click.pass_context
def cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a job: its unstarted items are not generated; finished results stay readable."""
    info = client_from(ctx).cancel(job_id)
    if as_json:
        click.echo(info.model_dump_json())
        return
    click.echo(f"{info.id}  {info.status.value}  {info.done}/{info.total} done")


WORKER_STACK = ("torch", "transformers", "tokenizers", "safetensors")


def _require_worker_stack(command: str) -> None:
    """Refuse a command that runs the model on an install without the worker's packages."""
    missing = [name for name in WORKER_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"`genq {command}` runs the model and needs {', '.join(missing)}, which this install "
            "lacks; install the worker's stack: pip install 'genq[worker]' (or 'genq[ct2]' for "
            "the CTranslate2 engine). Submitting and reading jobs need neither."
        )


def _worker_settings(settings: Settings, options: dict[str, Any]) -> Settings:
    updates = {k: v for k, v in options.items() if v is not None}
    return load_settings(**{"redis_url": settings.redis_url, **updates})


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@apply(WORKER_OPTIONS)
@click.pass_context
def worker(ctx: click.Context, /, **options: Any) -> None:
    """Run a worker (one per GPU). Other options go to `celery worker`, e.g. --loglevel=DEBUG."""
    _require_worker_stack("worker")
    from genq.worker.startup import run_worker

    run_worker(_worker_settings(ctx.find_object(Settings), options), ctx.args)  # type: ignore[arg-type]


@cli.command()
@click.argument("file")
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputFile(),
    help="Write results (JSON Lines) here, as they come.",
)
@apply(GENERATION_OPTIONS)
@apply(SCHEDULING_OPTIONS)
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
    _require_worker_stack("run")
    from genq.producer.embedded import WorkerProcess, embedded_redis, scratch_dir

    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    worker_opts = {k: options.pop(k) for k in list(options) if k in _WORKER_KEYS}
    tenant, priority = options.pop("tenant"), options.pop("priority")
    spec = with_job_options(read_spec(settings, file, options), priority=priority)
    worker_args = [f"--{k.replace('_', '-')}={v}" for k, v in worker_opts.items() if v is not None]
    with scratch_dir() as tmp, embedded_redis(Path(tmp) / "data") as url:
        print_note(f"embedded server at {url}; starting a worker")
        proc = WorkerProcess(url, worker_args, Path(tmp))
        try:
            one_server = {"redis_url": url, "results_url": None}  # the embedded one, for all
            client = Client(settings=settings.model_copy(update=one_server))
            job_id = client.submit_spec(spec, tenant_record(tenant))

            def check_worker() -> None:
                if not proc.alive():
                    raise GenqError(
                        f"the worker exited (status {proc.process.returncode}):\n{proc.log_tail()}"
                    )

            # Results go to the output as they are written, not once the job has ended.
            info, count = follow_to_output(client, job_id, output, timeout, check_worker)
            print_note(f"{count} results written to {output}")
        finally:
            proc.stop()
    finish(info)


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
    _require_worker_stack("random-model")
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    path = build_random_gpt2(Path(directory), PRESETS[preset], tokenizer_dir=tokenizer)
    click.echo(str(path))


for command in (submit, retry, jobs, workers, dead, api, queue, tenants, top):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="genq")


if __name__ == "__main__":  # pragma: no cover
    main()
