"""What every request handler shares (one object per API process, kept on ``app.state``),
and the dependencies that hand it and the caller's tenant to a handler."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from fastapi import Request

from genq.api.batch_store import Batches
from genq.api.errors import ApiError
from genq.api.file_store import FileStore
from genq.api.idempotency import HEADER, REPLAYED_HEADER, IdempotencyKeys
from genq.api.responses import ApiResponse
from genq.api.tenants import Tenant, Tenants
from genq.producer.client import Client
from genq.schema import WorkerInfo
from genq.settings import Settings

WORKERS_CACHE_S = 2.0  # live workers are read at most this often (each read lists them all)


@dataclass
class ApiContext:
    """The API process's connections and stores."""

    settings: Settings
    tenants: Tenants
    client: Client = field(init=False)
    files: FileStore = field(init=False)
    batches: Batches = field(init=False)
    idempotency: IdempotencyKeys = field(init=False)
    _workers: tuple[float, list[WorkerInfo]] = (0.0, [])

    def __post_init__(self) -> None:
        self.client = Client(settings=self.settings)
        redis = self.client.store.redis
        self.files = FileStore(
            redis, self.client.results_endpoint.connect_binary(), self.settings.file_ttl_s
        )
        self.batches = Batches(self.client, self.files, self.served_models)
        self.idempotency = IdempotencyKeys(redis)

    def live_workers(self) -> list[WorkerInfo]:
        """The live workers on this API's queue (read at most every WORKERS_CACHE_S)."""
        at, workers = self._workers
        if time.monotonic() - at > WORKERS_CACHE_S:
            workers = self.client.queue_workers()
            self._workers = (time.monotonic(), workers)
        return workers

    def served_models(self) -> set[str]:
        """Model names a request may ask for: GENQ_SERVED_MODEL_NAME, and each live worker's
        model (as configured, and its last path part); GENQ_MODEL when no worker is live."""
        names = {self.settings.served_model_name} if self.settings.served_model_name else set()
        models = {w.model for w in self.live_workers()} or {self.settings.model}
        for model in models:
            names |= {model, PurePath(model).name}
        return names

    def check_model(self, model: str) -> None:
        if model not in self.served_models():
            served = ", ".join(sorted(self.served_models()))
            raise ApiError(
                404,
                f"The model {model[:80]!r} does not exist here; served: {served}",
                param="model",
                code="model_not_found",
            )

    def require_worker(self) -> None:
        """503 when no worker serves the queue: a single request would wait for nothing."""
        if not self.live_workers():
            raise ApiError(
                503,
                "no genq worker is running for this service's queue; start one "
                "(genq worker) and retry",
                code="no_worker",
                retry_after_s=self.settings.lease_s,
            )


async def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.genq
    return ctx


async def tenant(request: Request) -> Tenant:
    """The caller (``Authorization: Bearer KEY``); 401 without a valid key."""
    ctx: ApiContext = request.app.state.genq
    return ctx.tenants.require(request.headers.get("authorization"))


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page as OpenAI's list endpoints answer it (the client pages on ``after=last_id``
    until ``has_more`` is false)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def idempotent(
    request: Request, who: Tenant, digest: str, produce: Callable[[], tuple[int, Any]]
) -> ApiResponse:
    """Answer with ``produce()`` once per Idempotency-Key (when the request carries one): a
    retry with the same key and request gets the first answer."""
    key = request.headers.get(HEADER)
    if key is None:
        status, body = produce()
        return ApiResponse(body, status)
    keys: IdempotencyKeys = request.app.state.genq.idempotency
    replay = keys.begin(who.name, key, digest)
    if replay is not None:
        return ApiResponse(replay.body, replay.status, headers={REPLAYED_HEADER: "true"})
    try:
        status, body = produce()
    except BaseException:
        keys.abandon(who.name, key)
        raise
    keys.finish(who.name, key, digest, status, body)
    return ApiResponse(body, status)
