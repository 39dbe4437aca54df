"""``genq jobs``, ``genq workers`` and ``genq dead``: what is in Redis, as tables on a terminal,
tab-separated lines on a pipe, or JSON."""

from __future__ import annotations

import click

from genq.producer.cli_options import KeyValue, client_from, limit_option
from genq.producer.cli_output import emit_rows, mean_batch_size, print_note
from genq.schema import JobStatus
from genq.submissions import JobQuery


@click.command()
@limit_option("Show at most this many jobs.")
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
    total, failed, priority, created (UTC), metadata.
    """
    query = JobQuery(frozenset(JobStatus(s) for s in statuses), dict(metadata))
    infos = client_from(ctx).jobs(limit, query)
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    emit_rows(
        ("id", "status", "done", "total", "failed", "priority", "created (UTC)", "metadata"),
        [
            (
                info.id,
                info.status.value,
                str(info.done),
                str(info.total),
                str(info.failed),
                info.priority.value,
                f"{info.created_at:%Y-%m-%d %H:%M:%S}",
                ",".join(f"{k}={v}" for k, v in info.metadata.items()),
            )
            for info in infos
        ],
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """List live workers with their batch counters.

    On a terminal, a table; otherwise one tab-separated line per worker: id, queue, engine,
    model, device, batches, items, tokens, mean batch.
    """
    infos = client_from(ctx).workers()
    if as_json:
        for info in infos:
            click.echo(info.model_dump_json())
        return
    rows = []
    for w in infos:
        mean = mean_batch_size(w.batch_sizes) or 0.0
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
    emit_rows((*headers, "mean batch"), rows)


@click.command()
@limit_option("Show at most this many, newest first.")
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
    client = client_from(ctx)
    if purge:
        count = client.purge_dead_letters()
        click.echo(f'{{"purged": {count}}}' if as_json else f"purged {count} dead letter(s)")
        return
    letters = client.dead_letters(0, limit)
    if as_json:
        for letter in letters:
            click.echo(letter.model_dump_json())
    else:
        emit_rows(
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
        print_note(f"{len(letters)} of {total} dead letters shown (--limit)")
    elif not letters:
        print_note("no dead letters")
