"""``/v1/batches``: create, retrieve, list and cancel, as the official OpenAI client calls
them (see :mod:`genq.api.batch_store` for what a batch is in genq)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from genq.api.batch_requests import BatchCreate
from genq.api.context import ApiContext, context, idempotent, list_object, tenant
from genq.api.idempotency import fingerprint
from genq.api.responses import ApiResponse
from genq.api.tenants import Tenant
from genq.settings import LIST_PAGE_DEFAULT, LIST_PAGE_MAX

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", summary="Create a batch from an uploaded input file")
def create_batch(
    request: Request,
    body: BatchCreate,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> ApiResponse:
    digest = fingerprint("POST", "/v1/batches", body.model_dump(mode="json"))
    return idempotent(request, who, digest, lambda: (200, ctx.batches.create(who, body)))


@router.get("", summary="List batches, newest first")
def list_batches(
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_PAGE_MAX)] = LIST_PAGE_DEFAULT,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> dict[str, Any]:
    data, more = ctx.batches.page(who.name, after, limit)
    return list_object(data, more)


@router.get("/{batch_id}", summary="Retrieve a batch")
def get_batch(
    batch_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> ApiResponse:
    return ApiResponse(ctx.batches.view(who.name, batch_id))


@router.post("/{batch_id}/cancel", summary="Cancel a batch")
def cancel_batch(
    request: Request,
    batch_id: str,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> ApiResponse:
    digest = fingerprint("POST", f"/v1/batches/{batch_id}/cancel")
    return idempotent(request, who, digest, lambda: (200, ctx.batches.cancel(who.name, batch_id)))
