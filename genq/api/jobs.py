"""genq's native endpoints, ``/v1/jobs``: what genq has beyond OpenAI's batches. Create a job
from a JSON body or a JSON Lines upload with every genq parameter, read its status and its
results page by page in input order while it runs, cancel, list."""

from __future__ import annotations

import hashlib
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genq import keyspace
from genq.api.context import ApiContext, context, idempotent, list_object, tenant
from genq.api.errors import ApiError, not_found, where_and_message
from genq.api.idempotency import fingerprint
from genq.api.responses import ApiResponse
from genq.api.tenants import Tenant
from genq.api.webhook_targets import check_target
from genq.errors import InputFileError, InvalidIdError, JobNotFoundError
from genq.producer.client import ResultFilter
from genq.producer.inputs import parse_line, read_items
from genq.producer.validation import with_job_options
from genq.schema import JobInfo, JobSpec, Priority
from genq.settings import LIST_PAGE_DEFAULT, LIST_PAGE_MAX
from genq.text import IdempotencyKey

router = APIRouter(prefix="/v1/jobs", tags=["jobs (genq)"])

JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines")
MAX_RESULTS_PAGE = 1000


class JobCreate(BaseModel):
    """A job as a JSON body: items (prompts, or objects with prompt/messages, custom_id and
    params overrides) and job-level options."""

    model_config = ConfigDict(extra="forbid")
    items: list[Any] = Field(min_length=1)
    params: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    idempotency_key: IdempotencyKey | None = None
    expires_in_s: float | None = None
    callback_url: str | None = None  # told when the job ends (a Standard Webhooks POST)
    priority: Priority | None = None  # default: GENQ_DEFAULT_PRIORITY


def job_object(info: JobInfo) -> dict[str, Any]:
    return {"object": "job", **info.model_dump(mode="json", exclude={"tenant"})}


@router.post("", status_code=201, summary="Create a job (JSON body, or a JSON Lines upload)")
async def create_job(
    request: Request, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> ApiResponse:
    """A JSON body is a :class:`JobCreate`. A JSON Lines body (Content-Type
    ``application/jsonl``) holds one item per line, and the job's options go in the query
    string: ``params`` and ``metadata`` as JSON, ``idempotency_key``, ``expires_in_s``,
    ``callback_url``, ``priority``. A tenant at one of its quotas gets a 429 with
    ``Retry-After`` (nothing is enqueued)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in JSONL_TYPES:
        q = request.query_params
        with tempfile.NamedTemporaryFile(suffix=".jsonl") as spool:
            size = 0
            async for block in request.stream():
                size += len(block)
                if size > ctx.settings.max_input_file_bytes:
                    raise ApiError(
                        413,
                        f"the upload is over {ctx.settings.max_input_file_bytes}"
                        " bytes (GENQ_MAX_INPUT_FILE_BYTES)",
                    )
                spool.write(block)
            spool.flush()
            try:
                items, labels = await run_in_threadpool(
                    read_items, spool.name, ctx.settings.max_input_file_bytes, "jsonl"
                )
            except InputFileError as e:
                raise ApiError(400, str(e).replace(spool.name, "the upload")) from None
        options = {
            "params": _json_query(q.get("params"), "params"),
            "metadata": _json_query(q.get("metadata"), "metadata"),
            "idempotency_key": q.get("idempotency_key"),
            "expires_in_s": _json_query(q.get("expires_in_s"), "expires_in_s"),
            "callback_url": q.get("callback_url"),
            "priority": q.get("priority"),
        }
        body = _job_body({"items": items, **options})
    else:
        raw = await request.body()
        try:
            parsed = parse_line(raw.decode("utf-8"))  # strict JSON: no NaN, no key twice
        except (UnicodeDecodeError, InputFileError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        body = _job_body(parsed)
        labels = None
    return await run_in_threadpool(_create, request, who, ctx, body, labels)


def _create(
    request: Request, who: Tenant, ctx: ApiContext, body: JobCreate, labels: list[str] | None
) -> ApiResponse:
    record = {"tenant": who.name}
    if body.callback_url is not None:
        if not who.webhook_secret:
            raise ApiError(
                400,
                "callback_url needs the tenant's webhook_secret (set it in "
                "GENQ_API_TENANTS_FILE) to sign what it sends",
                param="callback_url",
            )
        check_target(body.callback_url, allow_private=ctx.settings.webhook_allow_private)
        record |= {"notify": "1", "callback_url": body.callback_url}
    spec = ctx.client.validate(body.items, body.params, metadata=body.metadata, labels=labels)
    # Keys are the tenant's own: another tenant's equal key names another job (and the
    # conflict message never shows a job of another tenant).
    key = None
    if body.idempotency_key is not None:
        hashed = hashlib.sha256(body.idempotency_key.encode("utf-8", "surrogatepass"))
        key = f"{who.name}/{hashed.hexdigest()}"
    spec = with_job_options(
        spec,
        idempotency_key=key,
        expires_in_s=body.expires_in_s,
        priority=body.priority.value if body.priority else None,
    )
    digest = fingerprint("POST", "/v1/jobs", spec.fingerprint(), body.callback_url)
    return idempotent(request, who, digest, lambda: (201, _submit(ctx, who, spec, record)))


def _submit(ctx: ApiContext, who: Tenant, spec: JobSpec, record: dict[str, str]) -> dict[str, Any]:
    job_id = ctx.client.submit_spec(spec, record)
    info = ctx.client.status(job_id)
    if info.tenant != who.name:  # an idempotency key another tenant's job holds
        raise ApiError(
            409, "idempotency_key is in use; choose another", param="idempotency_key", retry=False
        )
    created, index = info.created_at.timestamp(), keyspace.tenant_jobs(who.name)
    retention = ctx.settings.unfinished_ttl_s + ctx.settings.result_ttl_s
    with ctx.client.store.redis.pipeline(transaction=True) as pipe:
        pipe.zadd(index, {job_id: created})
        pipe.zremrangebyscore(index, "-inf", created - retention)  # jobs gone by now
        pipe.execute()
    return job_object(info)


def _job_body(data: Any) -> JobCreate:
    try:
        return JobCreate.model_validate(data)
    except ValidationError as e:
        lines = []
        for problem in e.errors(include_url=False)[:5]:
            where, message = where_and_message(problem)
            lines.append(f"{where or 'body'}: {message}")
        problems = "; ".join(lines)
        raise ApiError(400, f"invalid job: {problems}") from None


def _json_query(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return parse_line(value)  # strict JSON, nesting bounded
    except InputFileError as e:
        raise ApiError(400, f"query parameter {name} must be JSON: {e}", param=name) from None


def owned(ctx: ApiContext, who: Tenant, job_id: str) -> JobInfo:
    """The job, if the tenant owns it; 404 otherwise (whether it exists or not)."""
    try:
        info = ctx.client.status(job_id)
    except (JobNotFoundError, InvalidIdError):
        raise not_found("job", job_id) from None
    if info.tenant != who.name:
        raise not_found("job", job_id)
    return info


@router.get("", summary="List the tenant's jobs, newest first")
def list_jobs(
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_PAGE_MAX)] = LIST_PAGE_DEFAULT,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> dict[str, Any]:
    from genq.api.file_store import page_of

    rows, more = page_of(
        ctx.client.store.redis, keyspace.tenant_jobs(who.name), keyspace.job, after, limit, True
    )
    data = []
    for row in rows:
        try:
            data.append(job_object(ctx.client.status(row["id"])))
        except JobNotFoundError:
            continue  # it expired since the page was read
    return list_object(data, more)


@router.get("/{job_id}", summary="A job's status and counters")
def get_job(
    job_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> dict[str, Any]:
    return job_object(owned(ctx, who, job_id))


@router.get("/{job_id}/results", summary="Results in input order (available ones, while it runs)")
def job_results(
    job_id: str,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_RESULTS_PAGE)] = 100,
    only: ResultFilter = ResultFilter.ALL,
    who: Tenant = Depends(tenant),
    ctx: ApiContext = Depends(context),
) -> dict[str, Any]:
    """Items ``offset`` to ``offset + limit - 1``: those with a result, in input order;
    ``next_offset`` is where the next page starts (None after the last item)."""
    info = owned(ctx, who, job_id)
    page = [r for r in ctx.client.results(job_id, offset, limit) if only.keeps(r)]
    following = offset + limit
    return {
        "object": "list",
        "job_id": job_id,
        "total": info.total,
        "offset": offset,
        "next_offset": following if following < info.total else None,
        "data": [r.model_dump(mode="json") for r in page],
    }


@router.post("/{job_id}/cancel", summary="Cancel a job (finished results stay readable)")
def cancel_job(
    job_id: str, who: Tenant = Depends(tenant), ctx: ApiContext = Depends(context)
) -> dict[str, Any]:
    owned(ctx, who, job_id)
    return job_object(ctx.client.cancel(job_id))
