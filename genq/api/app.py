"""The ``genq api`` application: FastAPI routes over Redis, nothing kept in the process (any
number of API processes behind a load balancer serve the same state)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from genq import __version__
from genq.api import batches, completions, files, jobs
from genq.api.context import ApiContext
from genq.api.errors import install_handlers
from genq.api.events import JobEvents
from genq.api.gate import RequestGate
from genq.api.metrics import ApiMetrics, RequestMetrics
from genq.api.responses import ApiResponse
from genq.api.tenants import load_tenants
from genq.api.webhooks import WebhookSender
from genq.settings import DEADLINE_SWEEP_S, POLICY_REFRESH_S, Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``; the webhook sender runs while the app is served."""
    ctx = ApiContext(settings=settings, tenants=load_tenants(settings))
    sender = WebhookSender(
        ctx.client.store.redis,
        JobEvents(ctx.batches, ctx.tenants, settings),
        allow_private=settings.webhook_allow_private,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sender.start()
        sweeper = asyncio.create_task(sweep_deadlines(ctx))
        try:
            yield
        finally:
            sweeper.cancel()
            sender.stop()

    app = FastAPI(
        default_response_class=ApiResponse,
        title="genq",
        version=__version__,
        lifespan=lifespan,
        description="Batch text generation: the OpenAI Batch API and genq's own jobs.",
    )
    app.state.genq = ctx
    metrics = ApiMetrics()
    install_handlers(app)
    for module in (files, batches, completions, jobs):
        app.include_router(module.router)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics of this API process")
    def prometheus() -> Response:
        return metrics.response()

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Redis reachable and a worker live")
    async def readyz() -> ApiResponse:
        try:
            workers = len(await run_in_threadpool(ctx.client.queue_workers))
            redis_ok = True
        except Exception as e:  # any failure to read is "not ready"
            log.warning("readyz: %s", e)
            workers, redis_ok = 0, False
        ready = redis_ok and workers > 0
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "redis": redis_ok,
            "workers": workers,
        }
        return ApiResponse(body, 200 if ready else 503)

    app.add_middleware(RequestGate, tenants=ctx.tenants, settings=settings)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: refusals count too
    return app


def write_policies(ctx: ApiContext) -> None:
    """Put every configured tenant's weight and quotas in Redis (or clear them, for a tenant
    the file gives none): the file is the truth for its tenants."""
    for name, policy in ctx.tenants.policies().items():
        ctx.client.set_tenant_policy(name, policy)


async def sweep_deadlines(ctx: ApiContext) -> None:
    """End jobs whose deadline passed, every DEADLINE_SWEEP_S, in every API process (the
    script that ends a job is idempotent): a batch nobody polls still expires on time, and
    its webhook says so. Writes the tenants' policies first, and every POLICY_REFRESH_S."""
    quiet_until = 0.0
    policies_due = 0.0
    while True:
        try:
            if time.monotonic() >= policies_due:
                # Again and again: a Redis that came back empty gets them back.
                await run_in_threadpool(write_policies, ctx)
                policies_due = time.monotonic() + POLICY_REFRESH_S
        except Exception as e:  # Redis away: the next sweep tries again
            if time.monotonic() > quiet_until:
                log.warning("could not write the tenants' policies to Redis yet: %s", e)
                quiet_until = time.monotonic() + 60
        await asyncio.sleep(DEADLINE_SWEEP_S)
        try:
            while await run_in_threadpool(ctx.client.store.expire_due) > 0:
                pass
        except Exception as e:  # Redis away: the next sweep tries again
            if time.monotonic() > quiet_until:
                log.warning("deadline sweep failed: %s", e)
                quiet_until = time.monotonic() + 60


def app_from_environment() -> FastAPI:
    """The app for GENQ_* settings (uvicorn's factory, in each of ``--workers`` processes)."""
    from genq.settings import load_settings

    return create_app(load_settings())


def serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Run the API with uvicorn until interrupted; ``workers`` > 1 runs that many processes
    on one port (they share nothing but Redis)."""
    import uvicorn

    from genq.logs import uvicorn_log_config

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "proxy_headers": True,
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), log_config=uvicorn_log_config(settings), **options)
        return
    load_tenants(settings)  # a configuration error shows once, before any process starts
    # Each process reads its settings from the environment: pass on what the command line set.
    os.environ["GENQ_REDIS_URL"] = settings.redis_url
    uvicorn.run(
        "genq.api.app:app_from_environment",
        factory=True,
        workers=workers,
        log_config=uvicorn_log_config(settings),
        **options,
    )
