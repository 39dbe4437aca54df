"""`genq api`: serve the HTTP API (the OpenAI Batch API and genq's native endpoints)."""

from __future__ import annotations

import click

from genq.settings import DEFAULT_API_HOST, DEFAULT_API_PORT, Settings


@click.command("api")
@click.option("--host", default=DEFAULT_API_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_API_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes on this port (each serves any request: state is in Redis).",
)
@click.pass_context
def api(ctx: click.Context, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API: OpenAI's files, batches and completions, and /v1/jobs.

    Needs API keys: GENQ_API_KEYS=key1,key2 (each key its own tenant) or GENQ_API_TENANTS_FILE
    (TOML; see docs/api.md). Any number of API processes can serve one Redis.
    """
    from genq.api.app import serve

    settings: Settings = ctx.find_object(Settings)  # type: ignore[assignment]
    serve(settings, host, port, workers)
