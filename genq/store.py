"""Job state in Redis: what both sides read and write. genq's keys are read and written only
here and in the two stores built on this one, one per side: :mod:`genq.submissions` (the
producer's: submit, list, read, cancel) and :mod:`genq.worker.work_store` (the worker's: admit
a message, count attempts).

Every multi-key change is one Lua script (:mod:`genq.scripts`), so counters, results and status
never disagree, and a redelivered message can never count an item twice (the first result
written wins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import redis
from pydantic import TypeAdapter

from genq import keyspace, scripts
from genq.dead_letters import DeadLetterList
from genq.errors import (
    JobNotFoundError,
)
from genq.leases import unacked_index_key, unacked_key
from genq.pipelines import script_pipeline
from genq.registry import BatchStats, WorkerRecords
from genq.schema import (
    GenerationParams,
    ItemResult,
    JobInfo,
    JobStatus,
    Priority,
    from_epoch,
)
from genq.server_facts import ServerFacts
from genq.settings import (
    DEFAULT_UNFINISHED_TTL_S,
)

log = logging.getLogger(__name__)

IDEMPOTENCY_CLAIM_TRIES = 5  # a key taken over by another submit meanwhile is looked at again

METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])


class JobStore(WorkerRecords, DeadLetterList, ServerFacts):
    """A job's status (read by both sides) and its results' writes (workers; the API for lines
    it refuses); worker records, dead letters and what the server says of itself come from the
    classes it is made of, one module each."""

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
        self._create = client.register_script(scripts.CREATE_JOB)
        self._register_worker_scripts()

    def get(self, job_id: str) -> JobInfo:
        """Status and counters of one job: one HGETALL, whatever the job's size."""
        fields: dict[str, str] = self.redis.hgetall(keyspace.job(job_id))  # type: ignore[assignment]
        if not fields:
            raise JobNotFoundError(self._missing_job_message(job_id))
        if is_due(fields.get("status"), fields.get("expires_at")):
            self._expire_job(job_id)
            return self.get(job_id)
        return job_info(fields)

    def _expire_job(self, job_id: str) -> str | None:
        keys = job_keys(job_id)
        status: str | None = self._expire(keys=keys, args=[repr(time.time()), self.result_ttl_s])
        return status

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        """Current status of each job (None when it no longer exists), in one round trip."""
        ids = list(job_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keyspace.job(job_id), ["status", "expires_at"])
            values = pipe.execute()
        out: dict[str, JobStatus | None] = {}
        for job_id, (status, expires_at) in zip(ids, values, strict=False):
            if is_due(status, expires_at):
                status = self._expire_job(job_id)
            out[job_id] = JobStatus(status) if status else None
        return out

    def record(
        self, results_by_job: Mapping[str, Sequence[ItemResult]], batch: BatchStats | None = None
    ) -> dict[str, int]:
        """Store results (first write wins) and move counters, one script per job, pipelined.

        ``batch``, when given, adds the batch to its worker's counters in the same round trip.
        Returns, per job, how many results were new (-1 when the job no longer exists).
        """
        return {
            job: len(new) if new is not None else -1
            for job, new in self._write(results_by_job, batch, {}).items()
        }

    def record_new(
        self,
        results_by_job: Mapping[str, Sequence[ItemResult]],
        batch: BatchStats | None = None,
        settle: Mapping[str, Sequence[str]] | None = None,
    ) -> list[ItemResult]:
        """:meth:`record`, returning the results that were stored (not those an earlier
        delivery had written already): what a worker's metrics count, exactly once.

        ``settle``: per job, the delivery tags of queue messages that end with these results
        (every item of theirs ends here): their leases go in the same script as the results,
        which is their ack, so kombu's ack must then not touch Redis. Only where kombu's keys
        are on this Redis (the broker is the results store).
        """
        stored: list[ItemResult] = []
        for job_id, new in self._write(results_by_job, batch, settle or {}).items():
            left = set(new or ())
            for result in results_by_job[job_id]:
                if result.index in left:  # the first of two copies is the one written
                    left.discard(result.index)
                    stored.append(result)
        return stored

    def _write(
        self,
        results_by_job: Mapping[str, Sequence[ItemResult]],
        batch: BatchStats | None,
        settle: Mapping[str, Sequence[str]],
    ) -> dict[str, list[int] | None]:
        """Per job, the indexes whose results were new (None: the job no longer exists)."""
        now = repr(time.time())
        jobs = [j for j, rs in results_by_job.items() if rs]
        with script_pipeline(self.redis) as pipe:
            if batch is not None:
                self._count_batch(pipe, batch)
            for job_id in jobs:
                tags = settle.get(job_id, ())
                args: list[str | int] = [now, self.result_ttl_s, len(tags), *tags]
                for result in results_by_job[job_id]:
                    args += [result.index, "1" if result.ok else "0", result.model_dump_json()]
                keys = job_keys(job_id)
                if tags:
                    keys += [unacked_key(), unacked_index_key()]
                self._record(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        written: dict[str, list[int] | None] = {}
        for job_id, reply in zip(jobs, replies[-len(jobs) :] if jobs else [], strict=True):
            new, refused, *indexes = reply
            if int(refused):
                # The worker checks every index when it admits a message; this is the last line.
                log.error("job %s: %d result(s) refused: index outside the job", job_id, refused)
            written[job_id] = None if int(new) < 0 else [int(i) for i in indexes]
        return written


def as_text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def job_keys(job_id: str) -> list[str]:
    """The keys every job script takes, in order."""
    return [
        keyspace.job(job_id),
        keyspace.results(job_id),
        keyspace.attempts(job_id),
        keyspace.webhook_outbox(),
    ]


def is_due(status: str | None, expires_at: str | None) -> bool:
    """Whether an unfinished job is past its deadline (and should turn expired now)."""
    return (
        expires_at is not None
        and status in ("queued", "running")
        and time.time() >= float(expires_at)
    )


def job_info(fields: Mapping[str, str]) -> JobInfo:
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
        metadata=METADATA.validate_json(fields.get("metadata") or "{}"),
        error=fields.get("error") or None,
        expires_at=from_epoch(fields.get("expires_at")),
        tenant=fields.get("tenant") or None,
        priority=Priority(fields.get("priority") or Priority.NORMAL.value),
    )
