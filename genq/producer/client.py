"""The Python client: submit bulk jobs, follow their progress, read their results.

from genq import Client
client = Client("redis://localhost:6379/0")
job_id = client.submit(["Write a tagline for a bakery", ...], {"max_new_tokens": 32})
client.wait(job_id)
for result in client.iter_results(job_id):
    print(result.custom_id, result.outputs[0])
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import redis
from celery import Celery
from pydantic import ValidationError

from genq.broker import GENERATE_TASK, celery_app
from genq.errors import BrokerUnavailableError, EnqueueError, InvalidJobError, WaitTimeoutError
from genq.schema import (
    GenerationParams,
    ItemResult,
    JobInfo,
    JobItem,
    JobSpec,
    WorkChunk,
    WorkerInfo,
    duplicate_custom_ids,
)
from genq.settings import DEFAULT_POLL_INTERVAL_S, Settings, redact_url
from genq.store import JobStore, connect

MAX_PROBLEMS_SHOWN = 20

T = TypeVar("T")

ItemInput = str | Mapping[str, Any] | JobItem
ParamsInput = GenerationParams | Mapping[str, Any] | None


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return secrets.token_hex(16)


class Client:
    """Submits jobs to genq and reads them back. Needs Redis only: no torch, no model."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if redis_url is not None:
            self.settings = self.settings.model_copy(update={"redis_url": redis_url})
        self.store = JobStore(
            connect(self.settings.redis_url),
            self.settings.result_ttl_s,
            self.settings.unfinished_ttl_s,
        )
        self._celery: Celery | None = None

    # --- submission -----------------------------------------------------------------------
    def submit(
        self,
        items: Sequence[ItemInput],
        params: ParamsInput = None,
        *,
        metadata: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Validate a job and enqueue it; return its id.

        ``items`` are prompts (strings) or objects with ``prompt``, optional ``custom_id`` and
        optional ``params`` overriding the job's ``params``. Every item and parameter is
        validated first: an invalid job raises :class:`InvalidJobError` and enqueues nothing.
        ``labels`` name the items in error messages (the CLI passes input line numbers).
        A retried submit with the same ``idempotency_key`` returns the first job's id.
        """
        spec = self.validate(items, params, metadata=metadata, labels=labels)
        if idempotency_key is not None:
            spec = spec.model_copy(update={"idempotency_key": idempotency_key})
        return self.submit_spec(spec)

    def validate(
        self,
        items: Sequence[ItemInput],
        params: ParamsInput = None,
        *,
        metadata: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> JobSpec:
        """Check a job without enqueueing it; raise :class:`InvalidJobError` listing problems."""
        return validate_job(items, params, self.settings, metadata=metadata, labels=labels)

    def submit_spec(self, spec: JobSpec) -> str:
        """Enqueue an already validated :class:`JobSpec`; return the job id."""
        work = spec.work_items()
        job_id = new_job_id()
        if spec.idempotency_key is not None:
            key = spec.idempotency_key
            earlier = self._guard(lambda: self.store.claim_idempotency_key(key, job_id))
            if earlier is not None:
                return earlier
        self._guard(lambda: self.store.create_job(job_id, spec))
        now = time.time()
        size = self.settings.chunk_size
        try:
            app = self.celery
            with app.producer_or_acquire() as producer:
                for start in range(0, len(work), size):
                    chunk = WorkChunk(
                        job_id=job_id, enqueued_at=now, items=work[start : start + size]
                    )
                    app.send_task(
                        GENERATE_TASK,
                        args=[chunk.model_dump_json()],
                        queue=self.settings.queue,
                        producer=producer,
                    )
        except Exception as e:
            message = f"could not enqueue the job ({type(e).__name__}); submit it again"
            try:
                self.store.fail(job_id, message)
            finally:
                raise EnqueueError(f"job {job_id}: {message}") from e
        return job_id

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = celery_app(self.settings)
        return self._celery

    # --- reading --------------------------------------------------------------------------
    def status(self, job_id: str) -> JobInfo:
        """The job's status and counters (one Redis call, whatever its size)."""
        return self._guard(lambda: self.store.get(job_id))

    def jobs(self, limit: int = 20) -> list[JobInfo]:
        """The most recent jobs, newest first."""
        return self._guard(lambda: self.store.list_jobs(limit))

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[ItemResult]:
        """One page of results in input order (items still running are skipped)."""
        return self._guard(lambda: self.store.results(job_id, offset, limit))

    def iter_results(self, job_id: str, page_size: int = 500) -> Iterator[ItemResult]:
        """Every available result in input order, read page by page."""
        total = self.status(job_id).total
        for offset in range(0, total, page_size):
            yield from self.results(job_id, offset, page_size)

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        poll_interval_s: float | None = None,
        on_progress: Callable[[JobInfo], None] | None = None,
    ) -> JobInfo:
        """Block until the job ends; raise :class:`WaitTimeoutError` after ``timeout_s``."""
        interval = poll_interval_s or DEFAULT_POLL_INTERVAL_S
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.status(job_id)
            if on_progress is not None:
                on_progress(info)
            if info.is_terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} is still {info.status.value} after {timeout_s:g}s "
                    f"({info.done}/{info.total} items done); it keeps running"
                )
            time.sleep(interval)

    def cancel(self, job_id: str) -> JobInfo:
        """Stop generating the job's remaining items; finished results stay readable."""
        return self._guard(lambda: self.store.cancel(job_id))

    def workers(self) -> list[WorkerInfo]:
        """Live workers and their counters (batch sizes included)."""
        return self._guard(lambda: self.store.workers(self.settings.heartbeat_s))

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as e:
            if "auth" not in str(e).lower() and "NOPERM" not in str(e):
                raise
            raise BrokerUnavailableError(
                f"Redis at {redact_url(self.settings.redis_url)} refused the credentials; "
                "check the user and password in GENQ_REDIS_URL"
            ) from e
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise BrokerUnavailableError(
                f"cannot reach Redis at {redact_url(self.settings.redis_url)}: is it running? "
                "Set GENQ_REDIS_URL (or --redis-url) to the server genq should use."
            ) from e


def validate_job(
    items: Sequence[ItemInput],
    params: ParamsInput,
    settings: Settings,
    *,
    metadata: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
) -> JobSpec:
    """Check every item and parameter of a job; raise :class:`InvalidJobError` listing problems.

    Needs no Redis: the CLI validates a whole file before it connects to anything.
    """
    name = (lambda i: labels[i]) if labels is not None else (lambda i: f"item {i}")
    problems: list[str] = []
    if not items:
        raise InvalidJobError("the job has no items: give at least one prompt")
    limit = settings.max_items_per_job
    if len(items) > limit:
        raise InvalidJobError(
            f"the job has {len(items)} items; the limit is {limit} per job "
            "(split the input, or raise GENQ_MAX_ITEMS_PER_JOB)"
        )
    try:
        defaults = (
            params
            if isinstance(params, GenerationParams)
            else GenerationParams.model_validate(dict(params or {}))
        )
    except ValidationError as e:
        raise InvalidJobError(_describe("job params", e)) from e
    parsed: list[JobItem] = []
    for index, raw in enumerate(items):
        try:
            item = _as_item(raw)
        except ValidationError as e:
            problems.append(_describe(name(index), e))
            continue
        except TypeError:
            problems.append(
                f"{name(index)}: expected a prompt string or an object with a 'prompt', "
                f"got {type(raw).__name__}"
            )
            continue
        try:
            defaults.with_overrides(item.params)
        except ValidationError as e:
            problems.append(_describe(name(index), e, loc_prefix="params."))
            continue
        size = len(item.prompt.encode())
        if size > settings.max_prompt_bytes:
            problems.append(
                f"{name(index)}: prompt is {size} bytes; the limit is "
                f"{settings.max_prompt_bytes} (GENQ_MAX_PROMPT_BYTES)"
            )
        parsed.append(item)
    if not problems:
        for index, first, cid in duplicate_custom_ids(parsed):
            problems.append(
                f"{name(index)}: custom_id {cid!r} is already used by {name(first)}; "
                "custom_id must be unique within a job"
            )
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        tail = f"\n... and {more} more problem(s)" if more else ""
        raise InvalidJobError(
            f"invalid job, nothing was enqueued ({len(problems)} problem(s)):\n"
            + "\n".join(shown)
            + tail
        )
    try:
        return JobSpec(items=parsed, params=defaults, metadata=dict(metadata or {}))
    except ValidationError as e:
        raise InvalidJobError(_describe("job", e)) from e


def _as_item(raw: ItemInput) -> JobItem:
    if isinstance(raw, JobItem):
        return raw
    if isinstance(raw, str):
        return JobItem(prompt=raw)
    if not isinstance(raw, Mapping):
        raise TypeError(type(raw).__name__)
    return JobItem.model_validate(dict(raw))


def _describe(where: str, error: ValidationError, loc_prefix: str = "") -> str:
    """A ValidationError as short lines: ``where: field: message``."""
    lines = []
    for problem in error.errors(include_url=False):
        loc = ".".join(str(part) for part in problem["loc"])
        loc = f"{loc_prefix}{loc}" if loc else loc_prefix.rstrip(".")
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown parameter (see `genq submit --help` for the accepted ones)"
        lines.append(f"{where}: {loc}: {message}" if loc else f"{where}: {message}")
    return "\n".join(lines)
