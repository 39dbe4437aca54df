"""``/v1/files``: upload (multipart, streamed to Redis and checked line by line), list, get,
content and delete, as the official OpenAI client calls them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from genq.api.context import ApiContext, context, list_object, tenant
from genq.api.errors import ApiError
from genq.api.file_store import file_object
from genq.api.idempotency import HEADER, REPLAYED_HEADER, fingerprint
from genq.api.responses import ApiResponse
from genq.api.tenants import Tenant
from genq.settings import MAX_FILE_TTL_S, MIN_FILE_TTL_S

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", summary="Upload a batch input file (JSON Lines)")
def create_file(
    request: Request,
    file: Annotated[UploadFile, File(description="JSON Lines, one request per line")],
    purpose: Annotated[str, Form()],
    expires_after_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    expires_after_seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> ApiResponse:
    """Store the file and check every line as batch input; invalid lines are reported when a
    batch is created from it (as OpenAI does), with their line numbers."""
    if purpose != "batch":
        raise ApiError(
            400,
            f"purpose {purpose[:40]!r} is not supported: genq stores batch "
            "input files (purpose 'batch')",
            param="purpose",
        )
    ttl_s = None
    if expires_after_anchor is not None or expires_after_seconds is not None:
        if expires_after_anchor != "created_at" or expires_after_seconds is None:
            raise ApiError(
                400, "expires_after needs anchor 'created_at' and seconds", param="expires_after"
            )
        if not MIN_FILE_TTL_S <= expires_after_seconds <= MAX_FILE_TTL_S:
            raise ApiError(
                400,
                f"expires_after[seconds] must be {MIN_FILE_TTL_S}-{MAX_FILE_TTL_S}",
                param="expires_after[seconds]",
            )
        ttl_s = expires_after_seconds
    max_bytes = min(
        who.max_file_bytes or ctx.settings.max_input_file_bytes, ctx.settings.max_input_file_bytes
    )
    max_lines = min(
        who.max_file_lines or ctx.settings.max_items_per_job, ctx.settings.max_items_per_job
    )
    filename = (file.filename or "input.jsonl")[:255]
    fields, _, sha = ctx.files.upload(
        who.name, filename, file.file, max_bytes=max_bytes, max_lines=max_lines, ttl_s=ttl_s
    )
    body = file_object(fields)
    key = request.headers.get(HEADER)
    if key is None:
        return ApiResponse(body)
    # The content's digest is known only once it is read: a replay drops the new copy.
    digest = fingerprint("POST", "/v1/files", purpose, filename, ttl_s, sha)
    try:
        replay = ctx.idempotency.begin(who.name, key, digest)
    except BaseException:
        ctx.files.delete(who.name, fields["id"])
        raise
    if replay is not None:
        ctx.files.delete(who.name, fields["id"])
        return ApiResponse(replay.body, replay.status, headers={REPLAYED_HEADER: "true"})
    ctx.idempotency.finish(who.name, key, digest, 200, body)
    return ApiResponse(body)


@router.get("", summary="List files")
def list_files(
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,  # OpenAI's page bounds for files
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    purpose: str | None = None,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> dict[str, Any]:
    rows, more = ctx.files.page(who.name, after, limit, order == "desc", purpose)
    data = [file_object(row) for row in rows]
    return list_object(data, more)


@router.get("/{file_id}", summary="Retrieve a file's metadata")
def get_file(
    file_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> dict[str, Any]:
    return file_object(ctx.files.get(who.name, file_id))


@router.get("/{file_id}/content", summary="Download a file")
def file_content(
    file_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> StreamingResponse:
    fields = ctx.files.get(who.name, file_id)
    return StreamingResponse(
        ctx.files.content(file_id),
        media_type="application/jsonl",
        headers={
            "content-length": fields["bytes"],
            "content-disposition": f'attachment; filename="{file_id}.jsonl"',
        },
    )


@router.delete("/{file_id}", summary="Delete a file")
def delete_file(
    file_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> dict[str, Any]:
    ctx.files.delete(who.name, file_id)
    return {"id": file_id, "object": "file", "deleted": True}
