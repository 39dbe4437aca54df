"""Job state in Redis: the only code that reads or writes genq's keys.

Every multi-key change is one Lua script (:mod:`genq.scripts`), so counters, results and status
never disagree, and a redelivered message can never count an item twice (the first result
written wins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import TypeAdapter

from genq import keyspace, scripts
from genq.dead_letters import DeadLetterList
from genq.errors import DurabilityError, IdempotencyConflictError, JobNotFoundError
from genq.registry import BatchStats, WorkerRecords
from genq.schema import GenerationParams, ItemResult, JobInfo, JobSpec, JobStatus, from_epoch
from genq.server_facts import ServerFacts
from genq.settings import (
    DEFAULT_UNFINISHED_TTL_S,
    LIST_JOBS_PAGE,
    LIST_JOBS_SCAN_LIMIT,
)

log = logging.getLogger(__name__)

IDEMPOTENCY_CLAIM_TRIES = 5  # a key taken over by another submit meanwhile is looked at again

_METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])


@dataclass(frozen=True)
class Admission:
    """What a job's record says about a message a worker received."""

    status: JobStatus | None  # None: no such job
    total: int  # the job's item count
    params: GenerationParams | None  # the job's default parameters (None when refused)
    done: set[int]  # the message's indexes that already have a result
    bad_index: str | None  # the first index that is not the job's (nothing was changed)


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

    @classmethod
    def of(cls, spec: JobSpec, record_fields: Mapping[str, str] | None = None) -> NewJob:
        return cls(
            total=len(spec.items),
            params=spec.params,
            metadata=spec.metadata,
            expires_in_s=spec.expires_in_s,
            record_fields=record_fields or {},
        )


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


class JobStore(WorkerRecords, DeadLetterList, ServerFacts):
    """Reads and writes jobs and results in Redis; worker records, dead letters and what the
    server says of itself come from the classes it is made of, one module each."""

    def __init__(
        self,
        client: redis.Redis,
        result_ttl_s: int,
        unfinished_ttl_s: int = DEFAULT_UNFINISHED_TTL_S,
    ) -> None:
        self.redis = client
        self.result_ttl_s = result_ttl_s
        self.unfinished_ttl_s = unfinished_ttl_s
        self._record = client.register_script(scripts.RECORD)
        self._finish = client.register_script(scripts.FINISH)
        self._admit = client.register_script(scripts.ADMIT)
        self._expire = client.register_script(scripts.EXPIRE)
        self._start = client.register_script(scripts.START)
        self._compare_and_set = client.register_script(scripts.COMPARE_AND_SET)
        self._register_worker_scripts()

    # --- jobs -----------------------------------------------------------------------------
    def create_job(self, job_id: str, job: NewJob) -> JobInfo:
        """Write a new job's record (queued) and index it; its messages are sent after."""
        now = time.time()
        fields: dict[Any, str | int] = {
            **job.record_fields,
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "total": job.total,
            "completed": 0,
            "failed": 0,
            "created_at": repr(now),
            "params": job.params.model_dump_json(),
            "metadata": _dump_metadata(job.metadata),
        }
        with self.redis.pipeline(transaction=True) as pipe:
            if job.expires_in_s is not None:
                fields["expires_at"] = repr(now + job.expires_in_s)
                if "notify" in job.record_fields:
                    # Someone waits to be told: `genq api` sweeps this list so that the job
                    # ends on time even if nobody looks at it (others expire on first sight).
                    pipe.zadd(keyspace.deadlines(), {job_id: now + job.expires_in_s})
            pipe.hset(keyspace.job(job_id), mapping=fields)
            pipe.expire(keyspace.job(job_id), self.unfinished_ttl_s)
            pipe.zadd(keyspace.jobs_index(), {job_id: now})
            pipe.execute()
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
                    raise IdempotencyConflictError(
                        f"idempotency key already used for job {earlier_id}, whose items or "
                        "options differ from this submit's; use a new key for a different job "
                        "(or submit exactly the same content to get that job's id back)"
                    )
                return earlier_id
            args: list[str | int] = [existing, binding, self.unfinished_ttl_s]
            if self._compare_and_set(keys=[name], args=args):
                return None
        raise IdempotencyConflictError(
            "idempotency key is being claimed by other submits at this moment; submit again"
        )

    def discard_job(self, job_id: str) -> None:
        """Delete a job that was never enqueued (its submit lost the idempotency key)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.job(job_id))
            pipe.zrem(keyspace.jobs_index(), job_id)
            pipe.execute()

    def get(self, job_id: str) -> JobInfo:
        """Status and counters of one job: one HGETALL, whatever the job's size."""
        fields: dict[str, str] = self.redis.hgetall(keyspace.job(job_id))  # type: ignore[assignment]
        if not fields:
            raise JobNotFoundError(self._missing_job_message(job_id))
        if _due(fields.get("status"), fields.get("expires_at")):
            self._expire_job(job_id)
            return self.get(job_id)
        return _job_info(fields)

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

    def _expire_job(self, job_id: str) -> str | None:
        keys = _job_keys(job_id)
        status: str | None = self._expire(keys=keys, args=[repr(time.time()), self.result_ttl_s])
        return status

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
                info = _job_info(row)
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
            if row and _due(row.get("status"), row.get("expires_at")):
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
        keys = _job_keys(job_id)
        args: list[str | int] = [repr(time.time()), self.result_ttl_s, status.value, error]
        if self._finish(keys=keys, args=args) is None:
            self.get(job_id)  # raises JobNotFoundError

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        """Current status of each job (None when it no longer exists), in one round trip."""
        ids = list(job_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keyspace.job(job_id), ["status", "expires_at"])
            values = pipe.execute()
        out: dict[str, JobStatus | None] = {}
        for job_id, (status, expires_at) in zip(ids, values, strict=False):
            if _due(status, expires_at):
                status = self._expire_job(job_id)
            out[job_id] = JobStatus(status) if status else None
        return out

    def admit(self, job_id: str, indexes: Sequence[int]) -> Admission:
        """Check a message's item ``indexes`` against the job's record and mark the job
        running; return what the worker needs to run them (see :class:`Admission`).

        One round trip: a worker calls it for every message it receives. A message with an
        index that is not one of the job's changes nothing.
        """
        keys = _job_keys(job_id)
        args: list[str | int] = [repr(time.time()), self.result_ttl_s, *indexes]
        status, total, params, done, bad = self._admit(keys=keys, args=args)
        return Admission(
            status=JobStatus(status) if status else None,
            total=int(total),
            params=GenerationParams.model_validate_json(params) if params else None,
            done={int(i) for i in done},
            bad_index=None if bad is None else str(bad),
        )

    def start(
        self, items: Mapping[str, Sequence[int]], retry: bool = False
    ) -> tuple[dict[str, JobStatus | None], dict[tuple[str, int], int]]:
        """Count an attempt for items (by job) a worker is about to generate, in one round
        trip: only for items never started before, unless ``retry``. Returns each job's
        status (items of ended jobs are not counted) and, per (job, index), this attempt's
        number, or minus the number of earlier attempts for an item not counted now."""
        now = repr(time.time())
        jobs = list(items)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                args: list[str | int] = [now, self.result_ttl_s, int(retry), *items[job_id]]
                self._start(keys=_job_keys(job_id), args=args, client=pipe)
            replies = pipe.execute()
        statuses: dict[str, JobStatus | None] = {}
        attempts: dict[tuple[str, int], int] = {}
        for job_id, (status, counts) in zip(jobs, replies, strict=True):
            statuses[job_id] = JobStatus(status) if status else None
            for index, count in zip(items[job_id], counts, strict=False):
                attempts[(job_id, index)] = int(count)
        return statuses, attempts

    # --- results --------------------------------------------------------------------------
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
        return [ItemResult.model_validate_json(v) for v in values if v is not None]

    def record(
        self, results_by_job: Mapping[str, Sequence[ItemResult]], batch: BatchStats | None = None
    ) -> dict[str, int]:
        """Store results (first write wins) and move counters, one script per job, pipelined.

        ``batch``, when given, adds the batch to its worker's counters in the same round trip.
        Returns, per job, how many results were new (-1 when the job no longer exists).
        """
        now = repr(time.time())
        jobs = [j for j, rs in results_by_job.items() if rs]
        with self.redis.pipeline(transaction=False) as pipe:
            if batch is not None:
                self._count_batch(pipe, batch)
            for job_id in jobs:
                args: list[str | int] = [now, self.result_ttl_s]
                for result in results_by_job[job_id]:
                    args += [result.index, "1" if result.ok else "0", result.model_dump_json()]
                keys = _job_keys(job_id)
                self._record(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        counts: dict[str, int] = {}
        for job_id, (new, refused) in zip(jobs, replies[-len(jobs) :] if jobs else [], strict=True):
            if int(refused):
                # The worker checks every index when it admits a message; this is the last line.
                log.error("job %s: %d result(s) refused: index outside the job", job_id, refused)
            counts[job_id] = int(new)
        return counts


def _dump_metadata(metadata: Mapping[str, str]) -> str:
    return _METADATA.dump_json(dict(metadata)).decode()


def _job_keys(job_id: str) -> list[str]:
    """The keys every job script takes, in order."""
    return [
        keyspace.job(job_id),
        keyspace.results(job_id),
        keyspace.attempts(job_id),
        keyspace.webhook_outbox(),
    ]


def _due(status: str | None, expires_at: str | None) -> bool:
    """Whether an unfinished job is past its deadline (and should turn expired now)."""
    return (
        expires_at is not None
        and status in ("queued", "running")
        and time.time() >= float(expires_at)
    )


def _job_info(fields: Mapping[str, str]) -> JobInfo:
    return JobInfo(
        id=fields["id"],
        status=JobStatus(fields["status"]),
        total=int(fields["total"]),
        completed=int(fields.get("completed", 0)),
        failed=int(fields.get("failed", 0)),
        created_at=from_epoch(fields["created_at"]),  # type: ignore[arg-type]
        started_at=from_epoch(fields.get("started_at")),
        finished_at=from_epoch(fields.get("finished_at")),
        params=GenerationParams.model_validate_json(fields.get("params") or "{}"),
        metadata=_METADATA.validate_json(fields.get("metadata") or "{}"),
        error=fields.get("error") or None,
        expires_at=from_epoch(fields.get("expires_at")),
        tenant=fields.get("tenant") or None,
    )
