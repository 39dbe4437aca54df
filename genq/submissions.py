"""The producer's side of the job store: submit a job (quotas, idempotency keys, durability),
list jobs, read results, cancel. Used by the client, the CLI and the API; workers never."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis
from pydantic import TypeAdapter

from genq import keyspace
from genq.errors import (
    DurabilityError,
    IdempotencyConflictError,
    QuotaExceededError,
)
from genq.schema import GenerationParams, ItemResult, JobInfo, JobSpec, JobStatus, Priority
from genq.settings import (
    DEFAULT_TENANT,
    LIST_JOBS_PAGE,
    LIST_JOBS_SCAN_LIMIT,
    QUOTA_RETRY_AFTER_S,
)
from genq.store import METADATA, JobStore, as_text, is_due, job_info, job_keys

IDEMPOTENCY_CLAIM_TRIES = 5  # a key taken over by another submit meanwhile is looked at again


@dataclass(frozen=True)
class NewJob:
    """What a job's record holds before its items are sent: the items travel only in its
    queue messages, so a job can be enqueued from a stream (an API batch's input file)."""

    total: int
    params: GenerationParams
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_in_s: float | None = None
    # Extra record fields: the owning tenant, `notify` (its end goes to the webhook outbox).
    record_fields: Mapping[str, str] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL

    @classmethod
    def of(
        cls,
        spec: JobSpec,
        record_fields: Mapping[str, str] | None = None,
        *,
        priority: Priority = Priority.NORMAL,
    ) -> NewJob:
        """The record of ``spec``; ``priority`` when the spec names none (GENQ_DEFAULT_PRIORITY)."""
        return cls(
            total=len(spec.items),
            params=spec.params,
            metadata=spec.metadata,
            expires_in_s=spec.expires_in_s,
            record_fields=record_fields or {},
            priority=spec.priority or priority,
        )

    @property
    def tenant(self) -> str:
        """The tenant the job's work and quotas count for (the default one when none)."""
        return self.record_fields.get("tenant") or DEFAULT_TENANT


@dataclass(frozen=True)
class JobQuery:
    """Which jobs `list_jobs` returns: any of ``statuses`` (every status when empty), and
    every ``metadata`` pair (key and value equal)."""

    statuses: frozenset[JobStatus] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def matches_all(self) -> bool:
        return not self.statuses and not self.metadata

    def matches(self, info: JobInfo) -> bool:
        if self.statuses and info.status not in self.statuses:
            return False
        return all(info.metadata.get(k) == v for k, v in self.metadata.items())


class SubmissionStore(JobStore):
    """Jobs as their producers see them: created (within the tenant's quotas), listed, read,
    cancelled."""

    def create_job(self, job_id: str, job: NewJob) -> JobInfo:
        """Write a new job's record (queued) and index it; its messages are sent after.

        Raises :class:`QuotaExceededError`, writing nothing, when the job would put its tenant
        over a quota of its policy (``genq tenants``)."""
        now = time.time()
        fields: dict[str, str] = {
            **job.record_fields,
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "total": str(job.total),
            "completed": "0",
            "failed": "0",
            "created_at": repr(now),
            "params": job.params.model_dump_json(),
            "metadata": _dump_metadata(job.metadata),
            "priority": job.priority.value,
        }
        deadline = ""
        if job.expires_in_s is not None:
            fields["expires_at"] = repr(now + job.expires_in_s)
            if "notify" in job.record_fields:
                # Someone waits to be told: `genq api` sweeps this list so that the job ends on
                # time even if nobody looks at it (others expire on first sight).
                deadline = repr(now + job.expires_in_s)
        keys = [
            keyspace.job(job_id),
            keyspace.jobs_index(),
            keyspace.deadlines(),
            keyspace.tenant_unfinished(job.tenant),
            keyspace.tenant_policy(job.tenant),
        ]
        pairs = [part for item in fields.items() for part in item]
        args: list[str | int] = [job_id, repr(now), self.unfinished_ttl_s, job.total, deadline]
        args += pairs
        answer = [as_text(part) for part in self._create(keys=keys, args=args)]
        if answer[0] != "ok":
            what, used, limit = answer
            raise QuotaExceededError(
                _quota_message(job, what, int(used), int(limit)), QUOTA_RETRY_AFTER_S
            )
        return self.get(job_id)

    def confirm_durable(self, job_id: str, timeout_s: float) -> bool:
        """Wait until every write so far, the job's messages included, is on disk; return
        whether the server could confirm it.

        The append-only file is one log in write order, so one write on this connection after
        the messages were published, and WAITAOF on it, covers what kombu wrote on its own
        connections too. A server without persistence, or older than Redis 7.2 (no WAITAOF;
        it still writes the AOF before replying, so only a power cut can lose a write), cannot
        confirm: False.
        """
        self.redis.hset(keyspace.job(job_id), "enqueued_at", repr(time.time()))
        try:
            local, _replicas = self.redis.execute_command(  # type: ignore[no-untyped-call]
                "WAITAOF", 1, 0, int(timeout_s * 1000)
            )
        except redis.exceptions.ResponseError as e:
            reason = str(e).lower()
            # Too old a server, no append-only file, or an ACL user denied WAITAOF.
            if any(s in reason for s in ("unknown command", "appendonly is disabled", "noperm")):
                return False
            raise
        if int(local) < 1:
            raise DurabilityError(
                f"job {job_id} was enqueued but Redis did not confirm writing it to disk within "
                f"{timeout_s:g}s; it may run, or be lost if Redis crashes now. Check the server's "
                "disk, then submit again with the same idempotency key"
            )
        return True

    def claim_idempotency_key(self, key: str, fingerprint: str, job_id: str) -> str | None:
        """Bind ``key`` to ``job_id`` (whose record exists already) and the job's content
        ``fingerprint`` unless it is bound; return the earlier job id. A key bound to a job of
        other content raises :class:`IdempotencyConflictError` (Stripe's rule: one key, one
        request).

        SET NX is the arbiter between concurrent submits. Each submitter creates its job's
        record before it claims, so a bound job that does not exist is gone (expired), not
        in flight; such a key, or one bound to a job that failed to enqueue, is taken over by
        compare-and-set, so that two submitters cannot both take it over.
        """
        name = keyspace.idempotency(key)
        binding = f"{fingerprint} {job_id}"
        for _ in range(IDEMPOTENCY_CLAIM_TRIES):
            if self.redis.set(name, binding, nx=True, ex=self.unfinished_ttl_s):
                return None
            existing: str | None = self.redis.get(name)  # type: ignore[assignment]
            if existing is None:
                continue  # expired between the two calls
            earlier_fingerprint, _, earlier_id = existing.rpartition(" ")
            status = self.redis.hget(keyspace.job(earlier_id), "status") if earlier_id else None
            if status is not None and status != JobStatus.FAILED.value:
                if earlier_fingerprint != fingerprint:
                    raise IdempotencyConflictError(_conflict_message(earlier_id))
                return earlier_id
            args: list[str | int] = [existing, binding, self.unfinished_ttl_s]
            if self._compare_and_set(keys=[name], args=args):
                return None
        raise IdempotencyConflictError(
            "idempotency key is being claimed by other submits at this moment; submit again"
        )

    def bound_job(self, key: str, fingerprint: str) -> str | None:
        """The live job ``key`` is bound to, looked at before anything is written (a quota
        would refuse a new record): its id if its content is ``fingerprint`` (a retried
        submit), :class:`IdempotencyConflictError` if it is not. None when the key is free,
        or bound to a job gone or failed: :meth:`claim_idempotency_key` decides then."""
        existing: str | None = self.redis.get(keyspace.idempotency(key))  # type: ignore[assignment]
        if existing is None:
            return None
        earlier_fingerprint, _, earlier_id = existing.rpartition(" ")
        status = self.redis.hget(keyspace.job(earlier_id), "status") if earlier_id else None
        if status in (None, JobStatus.FAILED.value):
            return None
        if earlier_fingerprint != fingerprint:
            raise IdempotencyConflictError(_conflict_message(earlier_id))
        return earlier_id

    def discard_job(self, job_id: str, tenant: str) -> None:
        """Delete a job that was never enqueued (its submit lost the idempotency key)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.job(job_id))
            pipe.zrem(keyspace.jobs_index(), job_id)
            pipe.srem(keyspace.tenant_unfinished(tenant), job_id)
            pipe.execute()

    def expire_due(self, limit: int = 100) -> int:
        """End the unfinished jobs whose deadline has passed (as any look at them would):
        a job nobody polls still turns expired, and tells its webhook, on time. Returns how
        many deadlines were taken off the list (jobs that had ended before count too)."""
        now = time.time()
        due: list[str] = self.redis.zrangebyscore(  # type: ignore[assignment]
            keyspace.deadlines(), "-inf", now, start=0, num=limit
        )
        for job_id in due:
            self._expire_job(job_id)
            self.redis.zrem(keyspace.deadlines(), job_id)
        return len(due)

    def list_jobs(self, limit: int = 20, query: JobQuery | None = None) -> list[JobInfo]:
        """The most recent jobs matching ``query`` (every job when None), newest first.

        The ``genq:jobs`` index is read newest first, LIST_JOBS_PAGE ids at a time, until
        ``limit`` jobs match or the index is exhausted; at most LIST_JOBS_SCAN_LIMIT ids are
        read, so a query matching nothing among very many jobs returns the matches found in
        the newest LIST_JOBS_SCAN_LIMIT. Ids of jobs that no longer exist are pruned from the
        index on the way; jobs past their deadline turn expired first.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        query = query or JobQuery()
        page = limit if query.matches_all else max(limit, LIST_JOBS_PAGE)
        found: list[JobInfo] = []
        seen: set[str] = set()
        offset = scanned = 0
        while len(found) < limit and scanned < LIST_JOBS_SCAN_LIMIT:
            count = min(page, LIST_JOBS_SCAN_LIMIT - scanned)
            ids: list[str] = self.redis.zrevrange(  # type: ignore[assignment]
                keyspace.jobs_index(), offset, offset + count - 1
            )
            if not ids:
                break
            scanned += len(ids)
            rows = self.job_rows(ids)
            gone = [job_id for job_id, row in zip(ids, rows, strict=True) if not row]
            if gone:
                self.redis.zrem(keyspace.jobs_index(), *gone)
            # Pruned ids no longer take a rank; jobs submitted meanwhile push the rest down
            # (seen ids are skipped).
            offset += len(ids) - len(gone)
            for job_id, row in zip(ids, rows, strict=True):
                if not row or job_id in seen:
                    continue
                seen.add(job_id)
                info = job_info(row)
                if query.matches(info):
                    found.append(info)
                    if len(found) == limit:
                        break
            if len(ids) < count:
                break
        return found

    def job_rows(self, ids: Sequence[str]) -> list[dict[str, str]]:
        """Each job's record (empty when it no longer exists), past-deadline jobs expired."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keyspace.job(job_id))
            rows: list[dict[str, str]] = pipe.execute()
        for i, (job_id, row) in enumerate(zip(ids, rows, strict=True)):
            if row and is_due(row.get("status"), row.get("expires_at")):
                self._expire_job(job_id)
                rows[i] = self.redis.hgetall(keyspace.job(job_id))  # type: ignore[assignment]
        return rows

    def cancel(self, job_id: str) -> JobInfo:
        self._end(job_id, JobStatus.CANCELLED, "")
        return self.get(job_id)

    def fail(self, job_id: str, error: str) -> JobInfo:
        self._end(job_id, JobStatus.FAILED, error)
        return self.get(job_id)

    def _end(self, job_id: str, status: JobStatus, error: str) -> None:
        keys = job_keys(job_id)
        args: list[str | int] = [repr(time.time()), self.result_ttl_s, status.value, error]
        if self._finish(keys=keys, args=args) is None:
            self.get(job_id)  # raises JobNotFoundError

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[ItemResult]:
        """Results in input order, from item ``offset``; items without a result are skipped."""
        if offset < 0 or limit < 1:
            raise ValueError("offset must be >= 0 and limit >= 1")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keyspace.job(job_id), "total")
            pipe.hmget(keyspace.results(job_id), [str(i) for i in range(offset, offset + limit)])
            total, values = pipe.execute()
        if total is None:
            self.get(job_id)  # raises JobNotFoundError
        # One JSON array, parsed in one call: a page costs half as much to read. The values are
        # results genq's RECORD script wrote (each one JSON object), never outside input.
        return _RESULTS.validate_json("[" + ",".join(v for v in values if v is not None) + "]")

    def results_at(self, job_id: str, indexes: Sequence[int]) -> dict[int, ItemResult]:
        """The results of those of ``indexes`` that have one, by index (one round trip)."""
        if not indexes:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keyspace.job(job_id))
            pipe.hmget(keyspace.results(job_id), [str(i) for i in indexes])
            exists, values = pipe.execute()
        if not exists:
            self.get(job_id)  # raises JobNotFoundError
        found = [v for v in values if v is not None]
        return {r.index: r for r in _RESULTS.validate_json("[" + ",".join(found) + "]")}


_RESULTS = TypeAdapter(list[ItemResult])


def _conflict_message(earlier_id: str) -> str:
    return (
        f"idempotency key already used for job {earlier_id}, whose items or options differ "
        "from this submit's; use a new key for a different job (or submit exactly the same "
        "content to get that job's id back)"
    )


def _quota_message(job: NewJob, what: str, used: int, limit: int) -> str:
    if what == "max_jobs_in_progress":
        return (
            f"tenant {job.tenant!r} has {used} jobs in progress, its quota (max_jobs_in_progress="
            f"{limit}): nothing was enqueued; submit again once one of them has ended"
        )
    return (
        f"tenant {job.tenant!r} has {used} items queued and this job adds {job.total}, over its "
        f"quota (max_queued_items={limit}): nothing was enqueued; submit again once some have "
        "finished, or split the job"
    )


def _dump_metadata(metadata: Mapping[str, str]) -> str:
    return METADATA.dump_json(dict(metadata)).decode()
