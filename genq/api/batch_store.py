"""OpenAI batches on genq jobs: a batch is a job (``batch_`` + its id) plus a hash with the
batch's own fields. Its output and error files are written once, when the job has ended
(``finalizing``), by whichever API process sees that first."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import ValidationError

from genq import keyspace
from genq.api.batch_output import PAGE, PREFIX, BatchOutput
from genq.api.batch_requests import BatchCreate, window_s
from genq.api.errors import ApiError, not_found, problem_line
from genq.api.file_store import FileStore, page_of
from genq.api.lines import (
    ENDPOINTS,
    RequestRefused,
    defaults_for,
    translate,
)
from genq.api.tenants import Tenant
from genq.errors import QuotaExceededError
from genq.producer.client import Client
from genq.producer.enqueueing import new_job_id
from genq.producer.inputs import parse_line
from genq.schema import (
    ChunkItem,
    ErrorInfo,
    ItemErrorType,
    ItemResult,
    Priority,
    chunk_messages,
)
from genq.settings import (
    MAX_BATCH_METADATA_KEY_CHARS,
    MAX_BATCH_METADATA_VALUE_CHARS,
    MAX_FILE_ERRORS_KEPT,
    MAX_FILE_TTL_S,
)
from genq.submissions import NewJob
from genq.text import shown


def job_of(batch_id: str) -> str:
    """The job id behind a batch id; 404 for anything that is not one."""
    job_id = batch_id.removeprefix(PREFIX)
    if not batch_id.startswith(PREFIX) or not re.fullmatch(r"[0-9a-f]{32}", job_id):
        raise not_found("batch", batch_id)
    return job_id


class Batches:
    """Create, read, list and cancel batches, and write their output files."""

    def __init__(
        self, client: Client, files: FileStore, served_models: Callable[[], set[str]]
    ) -> None:
        self.client = client
        self.redis = client.store.redis
        self.files = files
        self.settings = client.settings
        self.served_models = served_models
        self.output = BatchOutput(self.redis, files, self.settings)

    # --- create ---------------------------------------------------------------------------
    def create(self, tenant: Tenant, request: BatchCreate) -> dict[str, Any]:
        """Create a batch from an uploaded file and enqueue its lines; a file with invalid
        lines gives a ``failed`` batch listing them (OpenAI's behaviour)."""
        for key, value in (request.metadata or {}).items():
            if (
                len(key) > MAX_BATCH_METADATA_KEY_CHARS
                or len(value) > MAX_BATCH_METADATA_VALUE_CHARS
            ):
                raise ApiError(
                    400,
                    f"metadata keys are at most {MAX_BATCH_METADATA_KEY_CHARS} "
                    f"characters and values {MAX_BATCH_METADATA_VALUE_CHARS}",
                    param="metadata",
                )
        if request.endpoint not in ENDPOINTS:
            raise ApiError(
                400,
                f"endpoint {request.endpoint[:64]!r} is not served by genq; "
                f"use {' or '.join(ENDPOINTS)}",
                param="endpoint",
                code="invalid_value",
            )
        seconds = window_s(request.completion_window)
        try:
            source = self.files.get(tenant.name, request.input_file_id)
        except ApiError:
            raise not_found("file", request.input_file_id, "input_file_id") from None
        if source["purpose"] != "batch":
            raise ApiError(
                400,
                "input_file_id must be a file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        models: list[str] = json.loads(source.get("models") or "[]")
        model = models[0] if models else ""
        errors = self._file_errors(source, request.endpoint, model)
        if not errors and model not in self.served_models():
            served = ", ".join(sorted(self.served_models())) or "none (no worker is running)"
            errors = [
                {
                    "code": "model_not_found",
                    "line": None,
                    "param": "body.model",
                    "message": f"model {model[:80]!r} is not served here; served: {served}",
                }
            ]
        job_id = new_job_id()
        now = time.time()
        fields = {
            "id": PREFIX + job_id,
            "tenant": tenant.name,
            "endpoint": request.endpoint,
            "input_file_id": request.input_file_id,
            "completion_window": request.completion_window,
            "model": model,
            "metadata": json.dumps(request.metadata) if request.metadata is not None else "",
            "created_at": repr(now),
            "errors": json.dumps(errors) if errors else "",
            "output_ttl_s": str(
                request.output_expires_after.seconds
                if request.output_expires_after
                else self.settings.file_ttl_s
            ),
        }
        record = {"tenant": tenant.name, "batch": "1"}
        if tenant.webhook_url:
            record["notify"] = "1"
        job = NewJob(
            total=int(source["lines"]),
            params=defaults_for(request.endpoint),
            metadata=request.metadata or {},
            expires_in_s=seconds,
            record_fields=record,
            priority=Priority(self.settings.default_priority),
        )
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keyspace.batch(job_id), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(keyspace.batch(job_id), self.settings.unfinished_ttl_s)
            pipe.zadd(keyspace.tenant_batches(tenant.name), {PREFIX + job_id: now})
            # No batch outlives this: older index entries name batches that are gone.
            retention = self.settings.unfinished_ttl_s + max(
                self.settings.result_ttl_s, self.settings.file_ttl_s, MAX_FILE_TTL_S
            )
            pipe.zremrangebyscore(keyspace.tenant_batches(tenant.name), "-inf", now - retention)
            pipe.execute()
        try:
            if errors:
                self.client.store.create_job(job_id, job)
                count = max(int(source.get("error_count") or 0), len(errors))
                self.client.store.fail(job_id, f"the input file has {count} invalid line(s)")
                self.redis.expire(keyspace.batch(job_id), self.settings.result_ttl_s)
            else:
                messages = self._messages(
                    job_id, request.input_file_id, request.endpoint, now, job.total
                )
                self.client.enqueue(job_id, job, messages)
        except QuotaExceededError:
            # Refused before the job's record was written: no batch either.
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(keyspace.batch(job_id))
                pipe.zrem(keyspace.tenant_batches(tenant.name), PREFIX + job_id)
                pipe.execute()
            raise
        return self.view(tenant.name, PREFIX + job_id)

    def _file_errors(
        self, source: dict[str, str], endpoint: str, model: str
    ) -> list[dict[str, Any]]:
        """The file's invalid lines, and lines for another endpoint or model than the batch's
        (found by reading the file again only when the file holds several)."""
        errors: list[dict[str, Any]] = json.loads(source.get("errors") or "[]")
        urls, models = (
            json.loads(source.get("urls") or "[]"),
            json.loads(source.get("models") or "[]"),
        )
        if not urls or (urls == [endpoint] and len(models) <= 1):
            return errors
        invalid = {e["line"] for e in errors}
        for number, raw in self.files.lines(source["id"]):
            if len(errors) >= MAX_FILE_ERRORS_KEPT:
                break
            if number in invalid:
                continue
            try:
                line = parse_line(raw.decode("utf-8"))
                url, line_model = line["url"], line["body"]["model"]
            except Exception:  # reported as an invalid line (beyond the first kept)
                continue
            if not isinstance(url, str) or not isinstance(line_model, str):
                continue
            if url != endpoint:
                errors.append(
                    {
                        "code": "mismatched_endpoint",
                        "line": number,
                        "param": "url",
                        "message": f"url {shown(url)} is not the batch's endpoint {endpoint}",
                    }
                )
            elif line_model != model:
                errors.append(
                    {
                        "code": "mismatched_model",
                        "line": number,
                        "param": "body.model",
                        "message": f"model {shown(line_model)} differs from the first "
                        f"line's {shown(model)}: a batch runs one model",
                    }
                )
        return sorted(errors, key=lambda e: e["line"] or 0)

    def _messages(
        self, job_id: str, file_id: str, endpoint: str, now: float, lines: int
    ) -> Iterator[str]:
        """The batch's queue messages, made while the file is read; lines genq cannot honour
        get their error result at once, and every line's custom_id is kept in order."""
        priority = Priority(self.settings.default_priority)
        chunk_size = self.settings.chunk_size_for(lines)
        items: list[ChunkItem] = []
        refused: list[ItemResult] = []
        ids: list[str] = []
        size_limit = self.settings.max_prompt_bytes

        def flush(final: bool) -> Iterator[str]:
            if items and (final or len(items) >= chunk_size):
                yield from chunk_messages(job_id, now, priority, items, chunk_size)
                items.clear()
            if refused and (final or len(refused) >= PAGE):
                self.client.store.record({job_id: list(refused)})
                refused.clear()
            if ids and (final or len(ids) >= PAGE):
                self.redis.rpush(keyspace.batch_custom_ids(job_id), *ids)
                self.redis.expire(keyspace.batch_custom_ids(job_id), self.settings.unfinished_ttl_s)
                ids.clear()

        for index, (_, raw) in enumerate(self.files.lines(file_id)):
            line = parse_line(raw.decode("utf-8"))
            cid = line["custom_id"]
            ids.append(cid)
            try:
                request = translate(endpoint, line["body"])
                if len(request.prompt.encode("utf-8", "surrogatepass")) > size_limit:
                    raise RequestRefused(
                        f"the prompt is over {size_limit} bytes (GENQ_MAX_PROMPT_BYTES)", "prompt"
                    )
                item = ChunkItem(
                    index=index,
                    prompt=request.prompt,
                    custom_id=cid,
                    params=request.overrides or None,
                    messages=request.messages,
                )
            except (RequestRefused, ValidationError) as e:
                # One line genq cannot run never stops the others from being enqueued.
                message = (
                    e.message
                    if isinstance(e, RequestRefused)
                    else problem_line(e.errors(include_url=False)[0])
                )
                refused.append(
                    ItemResult(
                        custom_id=cid,
                        index=index,
                        prompt="",
                        error=ErrorInfo(type=ItemErrorType.INVALID_REQUEST, message=message),
                    )
                )
            else:
                items.append(item)
            yield from flush(final=False)
        yield from flush(final=True)

    # --- read -----------------------------------------------------------------------------
    def view(self, tenant: str, batch_id: str) -> dict[str, Any]:
        """The batch object; 404 when it does not exist or is another tenant's."""
        job_id = job_of(batch_id)
        batch, job = self._rows(job_id)
        if not batch or not job or batch.get("tenant") != tenant:
            raise not_found("batch", batch_id)
        return self.render(job_id, batch, job)

    def _output_due(self, batch: dict[str, str], job: dict[str, str]) -> bool:
        if batch.get("finalized_at"):
            return False
        status = job["status"]
        settled = float(job.get("finished_at") or 0) + self.settings.cancel_settle_s
        return status in ("completed", "expired") or (
            status == "cancelled" and time.time() >= settled
        )

    def view_any(self, job_id: str) -> dict[str, Any] | None:
        """The batch object of ``job_id`` whoever owns it (for webhooks); None if gone."""
        batch, job = self._rows(job_id)
        return self.render(job_id, batch, job) if batch and job else None

    def _rows(self, job_id: str) -> tuple[dict[str, str], dict[str, str]]:
        batch: dict[str, str] = self.redis.hgetall(keyspace.batch(job_id))  # type: ignore[assignment]
        # The store's read turns a job past its deadline expired first.
        (job,) = self.client.store.job_rows([job_id])
        return batch, job

    def render(self, job_id: str, batch: dict[str, str], job: dict[str, str]) -> dict[str, Any]:
        """The batch object, finalising the batch first if its job has ended."""
        status = job["status"]
        finished = float(job.get("finished_at") or 0)
        if self._output_due(batch, job) and self.output.write(job_id, batch, job):
            batch = self.redis.hgetall(keyspace.batch(job_id))  # type: ignore[assignment]
        created = int(float(batch["created_at"]))
        counts = json.loads(batch.get("counts") or "null") or {
            "total": int(job["total"]),
            "completed": int(job.get("completed", 0)),
            "failed": int(job.get("failed", 0)),
        }
        stamp: dict[str, int | None] = {
            k: None
            for k in (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        }
        done_at = int(float(batch["finalized_at"])) if batch.get("finalized_at") else None
        if status == "failed":
            shown = "failed"
            stamp["failed_at"] = int(finished)
        else:
            stamp["in_progress_at"] = created
            shown = "in_progress"
            if status == "completed":
                stamp["finalizing_at"] = int(finished)
                shown, stamp["completed_at"] = (
                    ("completed", done_at) if done_at else ("finalizing", None)
                )
            elif status == "expired":
                # Its window closed; the files of what ran are being written until done_at.
                stamp["expired_at"] = int(finished)
                if done_at is None:
                    shown, stamp["finalizing_at"] = "finalizing", int(finished)
                else:
                    shown = "expired"
            elif status == "cancelled":
                stamp["cancelling_at"] = int(finished)
                shown, stamp["cancelled_at"] = (
                    ("cancelled", done_at) if done_at else ("cancelling", None)
                )
        errors = json.loads(batch.get("errors") or "null")
        usage = json.loads(batch.get("usage") or "null")
        return {
            "id": PREFIX + job_id,
            "object": "batch",
            "endpoint": batch["endpoint"],
            "model": batch.get("model") or None,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": batch["input_file_id"],
            "completion_window": batch["completion_window"],
            "status": shown,
            "output_file_id": batch.get("output_file_id") or None,
            "error_file_id": batch.get("error_file_id") or None,
            "created_at": created,
            **stamp,
            "expires_at": int(float(job["expires_at"])) if job.get("expires_at") else None,
            "request_counts": counts,
            "usage": usage,
            "metadata": json.loads(batch["metadata"]) if batch.get("metadata") else None,
        }

    def page(self, tenant: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of the tenant's batches, newest first, after the batch ``after``."""
        rows, more = page_of(
            self.redis,
            keyspace.tenant_batches(tenant),
            lambda bid: keyspace.batch(job_of(bid)),
            after,
            limit,
            True,
            keep=lambda row: bool(self.redis.exists(keyspace.job(job_of(row["id"])))),
        )
        out = [self.view_any(job_of(row["id"])) for row in rows if "id" in row]
        return [b for b in out if b is not None], more

    def cancel(self, tenant: str, batch_id: str) -> dict[str, Any]:
        """Cancel a batch: ``cancelling`` while rows already generating end (GENQ_CANCEL_SETTLE_S),
        then ``cancelled`` with the partial output; 409 for a batch that has ended."""
        current = self.view(tenant, batch_id)
        if current["status"] in ("cancelling", "cancelled"):
            return current
        if current["status"] != "in_progress":
            raise ApiError(
                409,
                f"cannot cancel a batch that is {current['status']}",
                code="batch_not_cancellable",
                retry=False,
            )
        self.client.cancel(job_of(batch_id))  # its pending messages are dropped too
        return self.view(tenant, batch_id)
