"""``POST /v1/completions`` and ``/v1/chat/completions`` for one request (through the same
queue as every batch, waiting for its result), and ``GET /v1/models``: so that a client can
try its settings before a bulk run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from genq.api.context import ApiContext, context, tenant
from genq.api.errors import ApiError, error_body, first_problem, not_found
from genq.api.lines import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    RequestRefused,
    defaults_for,
    translate,
)
from genq.api.openai_results import error_status, response_object
from genq.api.responses import ApiResponse
from genq.api.tenants import Tenant
from genq.errors import InputFileError
from genq.producer.inputs import parse_line
from genq.producer.validation import with_job_options
from genq.schema import JobItem, Priority
from genq.settings import MAX_JSON_BODY_BYTES

router = APIRouter(prefix="/v1", tags=["completions"])

POLL_S = (0.02, 0.05, 0.1, 0.2)  # a waiting request polls quickly first, then every 200 ms
SOURCE = "genq_endpoint"  # metadata key: which endpoint a single request came through


@router.post("/completions", summary="One completion (waits for its result)")
async def completion(
    request: Request, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> ApiResponse:
    return await _single(request, who, ctx, COMPLETIONS)


@router.post("/chat/completions", summary="One chat completion (waits for its result)")
async def chat_completion(
    request: Request, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> ApiResponse:
    return await _single(request, who, ctx, CHAT_COMPLETIONS)


async def _single(request: Request, who: Tenant, ctx: ApiContext, endpoint: str) -> ApiResponse:
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_JSON_BODY_BYTES} bytes")
    try:
        body = parse_line(raw.decode("utf-8"))  # strict JSON, nesting bounded
    except (UnicodeDecodeError, InputFileError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    try:
        asked = translate(endpoint, body)
    except RequestRefused as e:
        raise ApiError(400, e.message, param=e.param, code=e.code) from None
    await run_in_threadpool(ctx.check_model, asked.model)
    await run_in_threadpool(ctx.require_worker)
    try:
        item = JobItem(prompt=asked.prompt, messages=asked.messages, params=asked.overrides or None)
    except ValidationError as e:
        where, message = first_problem(e)
        raise ApiError(400, f"{where}: {message}", param=where) from None
    spec = ctx.client.validate([item], defaults_for(endpoint), metadata={SOURCE: endpoint})
    # Someone waits on the connection for this one: it goes ahead of batch work.
    spec = with_job_options(spec, priority=Priority.HIGH.value)
    record = {"tenant": who.name}
    job_id = await run_in_threadpool(ctx.client.submit_spec, spec, record)
    deadline = time.monotonic() + ctx.settings.completion_timeout_s
    for attempt in range(1_000_000):
        info = await run_in_threadpool(ctx.client.status, job_id)
        if info.is_terminal:
            break
        if time.monotonic() > deadline:
            await run_in_threadpool(ctx.client.cancel, job_id)
            raise ApiError(
                504,
                f"no result within {ctx.settings.completion_timeout_s:g}s "
                "(GENQ_COMPLETION_TIMEOUT_S); the request was cancelled",
                code="timeout",
                retry=False,
            )
        await asyncio.sleep(POLL_S[min(attempt, len(POLL_S) - 1)])
    results = await run_in_threadpool(ctx.client.results, job_id, 0, 1)
    if not results:
        raise ApiError(500, f"the request ended {info.status.value} without a result")
    result = results[0]
    if result.error is not None:
        status = error_status(result)
        return ApiResponse(error_body(status, result.error.message, result.error.type), status)
    created = int(info.finished_at.timestamp()) if info.finished_at else int(time.time())
    return ApiResponse(response_object(endpoint, result, asked.model, created, job_id))


@router.get("/models", summary="The models this service serves")
def list_models(_: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)) -> dict[str, Any]:
    return {"object": "list", "data": [_model(name) for name in sorted(ctx.served_models())]}


@router.get("/models/{model_id:path}", summary="One served model")
def get_model(
    model_id: str, _: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> dict[str, Any]:
    if model_id not in ctx.served_models():
        raise not_found("model", model_id)
    return _model(model_id)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "genq"}
