"""Job state in Redis: the only code that reads or writes genq's keys.

Every multi-key change is one Lua script, so counters, results and status never disagree, and a
redelivered message can never count an item twice (the first result written wins).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import TypeAdapter, ValidationError

from genq import keyspace
from genq.errors import BrokerUnavailableError, JobNotFoundError
from genq.schema import (
    GenerationParams,
    ItemResult,
    JobInfo,
    JobSpec,
    JobStatus,
    WorkerInfo,
    from_epoch,
)
from genq.settings import DEFAULT_UNFINISHED_TTL_S, WORKER_TTL_FACTOR, redact_url

_METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])

_TERMINAL_LUA = "{completed=true, failed=true, cancelled=true}"

# KEYS: job, results. ARGV: now, ttl_s, then (index, ok, json) triples.
# Returns the number of results that were new; -1 when the job no longer exists.
_RECORD = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local terminal = {_TERMINAL_LUA}
local new_ok, new_failed = 0, 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    if ARGV[i + 1] == '1' then new_ok = new_ok + 1 else new_failed = new_failed + 1 end
  end
end
local completed = redis.call('HINCRBY', KEYS[1], 'completed', new_ok)
local failed = redis.call('HINCRBY', KEYS[1], 'failed', new_failed)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  status = 'running'
end
if status == 'running' and completed + failed >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', ARGV[1])
  status = 'completed'
end
if terminal[status] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
else
  -- results never outlive their job record, even when the job never ends
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return new_ok + new_failed
"""

# KEYS: job, results. ARGV: now, then item indexes. Moves a queued job to running; returns
# {status or false, indexes that already have a result}.
_ADMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {false, {}} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  status = 'running'
end
local done = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then table.insert(done, tonumber(ARGV[i])) end
end
return {status, done}
"""

# KEYS: worker, worker batches, workers index. ARGV: now, ttl_s, worker id. Refreshes a live
# worker's record; never recreates a removed or expired one as a partial hash.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: job, results. ARGV: now, ttl_s, new status, error. Ends an unfinished job.
# Returns the status the job has afterwards (false if missing).
_FINISH = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local terminal = {_TERMINAL_LUA}
if terminal[status] then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return ARGV[3]
"""


@dataclass(frozen=True)
class BatchStats:
    """One forward-pass batch, for its worker's counters."""

    worker_id: str
    sequences: int
    items: int
    tokens: int


def connect(redis_url: str) -> redis.Redis:
    """Open a Redis client for ``redis_url`` (decoded responses, retries on transient errors)."""
    try:
        return redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            health_check_interval=30,
            socket_connect_timeout=5,
            socket_keepalive=True,
            retry_on_timeout=True,
        )
    except ValueError:
        raise BrokerUnavailableError(
            f"invalid Redis URL {redact_url(redis_url)!r}: "
            "expected redis://[user:password@]host:port/db (or rediss:// for TLS)"
        ) from None


class JobStore:
    """Reads and writes jobs, results and worker records in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        result_ttl_s: int,
        unfinished_ttl_s: int = DEFAULT_UNFINISHED_TTL_S,
    ) -> None:
        self.redis = client
        self.result_ttl_s = result_ttl_s
        self.unfinished_ttl_s = unfinished_ttl_s
        self._record = client.register_script(_RECORD)
        self._finish = client.register_script(_FINISH)
        self._admit = client.register_script(_ADMIT)
        self._heartbeat = client.register_script(_HEARTBEAT)

    # --- jobs -----------------------------------------------------------------------------
    def create_job(self, job_id: str, spec: JobSpec) -> JobInfo:
        now = time.time()
        fields: dict[Any, str | int] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "total": len(spec.items),
            "completed": 0,
            "failed": 0,
            "created_at": repr(now),
            "params": spec.params.model_dump_json(),
            "metadata": _dump_metadata(spec.metadata),
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keyspace.job(job_id), mapping=fields)
            pipe.expire(keyspace.job(job_id), self.unfinished_ttl_s)
            pipe.zadd(keyspace.jobs_index(), {job_id: now})
            pipe.execute()
        return self.get(job_id)

    def claim_idempotency_key(self, key: str, job_id: str) -> str | None:
        """Bind ``key`` to ``job_id`` unless it is bound already; return the earlier job id.

        SET NX is the arbiter between concurrent submits; a key whose job has expired is
        bound afresh.
        """
        name = keyspace.idempotency(key)
        if self.redis.set(name, job_id, nx=True, ex=self.unfinished_ttl_s):
            return None
        existing: str | None = self.redis.get(name)  # type: ignore[assignment]
        if existing and self.redis.exists(keyspace.job(existing)):
            return existing
        self.redis.set(name, job_id, ex=self.unfinished_ttl_s)
        return None

    def get(self, job_id: str) -> JobInfo:
        """Status and counters of one job: one HGETALL, whatever the job's size."""
        fields: dict[str, str] = self.redis.hgetall(keyspace.job(job_id))  # type: ignore[assignment]
        if not fields:
            raise JobNotFoundError(
                f"no job {job_id!r}: it was never submitted to this Redis, or it expired "
                "after its result TTL"
            )
        return _job_info(fields)

    def list_jobs(self, limit: int = 20) -> list[JobInfo]:
        """The most recent jobs, newest first; ids of expired jobs are pruned from the index."""
        ids: list[str] = self.redis.zrevrange(keyspace.jobs_index(), 0, limit - 1)  # type: ignore[assignment]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keyspace.job(job_id))
            rows = pipe.execute()
        gone = [job_id for job_id, row in zip(ids, rows, strict=False) if not row]
        if gone:
            self.redis.zrem(keyspace.jobs_index(), *gone)
        return [_job_info(row) for row in rows if row]

    def cancel(self, job_id: str) -> JobInfo:
        self._end(job_id, JobStatus.CANCELLED, "")
        return self.get(job_id)

    def fail(self, job_id: str, error: str) -> JobInfo:
        self._end(job_id, JobStatus.FAILED, error)
        return self.get(job_id)

    def _end(self, job_id: str, status: JobStatus, error: str) -> None:
        keys = [keyspace.job(job_id), keyspace.results(job_id)]
        args: list[str | int] = [repr(time.time()), self.result_ttl_s, status.value, error]
        if self._finish(keys=keys, args=args) is None:
            self.get(job_id)  # raises JobNotFoundError

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        """Current status of each job (None when it no longer exists), in one round trip."""
        ids = list(job_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keyspace.job(job_id), "status")
            values = pipe.execute()
        return {j: (JobStatus(v) if v else None) for j, v in zip(ids, values, strict=False)}

    def admit(self, job_id: str, indexes: Sequence[int]) -> tuple[JobStatus | None, set[int]]:
        """Mark the job running; return its status and which ``indexes`` already have a result.

        One round trip: a worker calls it for every message it receives.
        """
        keys = [keyspace.job(job_id), keyspace.results(job_id)]
        status, done = self._admit(keys=keys, args=[repr(time.time()), *indexes])
        return (JobStatus(status) if status else None), {int(i) for i in done}

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
                keys = [keyspace.job(job_id), keyspace.results(job_id)]
                self._record(keys=keys, args=args, client=pipe)
            counts = pipe.execute()
        return dict(zip(jobs, (int(c) for c in counts), strict=False))

    # --- workers --------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo, heartbeat_s: float) -> None:
        fields: dict[Any, str | int] = info.model_dump(
            mode="json", exclude={"batch_sizes", "started_at", "last_seen"}
        )
        fields["started_at"] = repr(info.started_at.timestamp())
        fields["last_seen"] = repr(time.time())
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.worker_batches(info.id))
            pipe.hset(keyspace.worker(info.id), mapping=fields)
            pipe.zadd(keyspace.workers_index(), {info.id: time.time()})
            self._expire_worker(pipe, info.id, heartbeat_s)
            pipe.execute()

    def heartbeat(self, worker_id: str, heartbeat_s: float) -> bool:
        """Refresh the worker's record; False when it is gone (re-register it then)."""
        now = time.time()
        ttl = max(int(heartbeat_s * WORKER_TTL_FACTOR) + 1, 2)
        keys = [
            keyspace.worker(worker_id),
            keyspace.worker_batches(worker_id),
            keyspace.workers_index(),
        ]
        return bool(self._heartbeat(keys=keys, args=[repr(now), ttl, worker_id]))

    def _count_batch(self, pipe: redis.client.Pipeline, batch: BatchStats) -> None:
        pipe.hincrby(keyspace.worker_batches(batch.worker_id), str(batch.sequences), 1)
        pipe.hincrby(keyspace.worker(batch.worker_id), "batches", 1)
        pipe.hincrby(keyspace.worker(batch.worker_id), "items", batch.items)
        pipe.hincrby(keyspace.worker(batch.worker_id), "tokens", batch.tokens)

    def remove_worker(self, worker_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.worker(worker_id), keyspace.worker_batches(worker_id))
            pipe.zrem(keyspace.workers_index(), worker_id)
            pipe.execute()

    def workers(self, heartbeat_s: float) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent, oldest first; stale entries are pruned."""
        cutoff = time.time() - heartbeat_s * WORKER_TTL_FACTOR
        self.redis.zremrangebyscore(keyspace.workers_index(), "-inf", cutoff)
        ids: list[str] = self.redis.zrange(keyspace.workers_index(), 0, -1)  # type: ignore[assignment]
        with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(keyspace.worker(worker_id))
                pipe.hgetall(keyspace.worker_batches(worker_id))
            rows = pipe.execute()
        out = []
        for fields, sizes in zip(rows[::2], rows[1::2], strict=False):
            if not fields:
                continue
            data = dict(fields)
            data["started_at"] = from_epoch(data.get("started_at"))
            data["last_seen"] = from_epoch(data.get("last_seen"))
            data["batch_sizes"] = {int(k): int(v) for k, v in sizes.items()}
            try:
                out.append(WorkerInfo.model_validate(data))
            except ValidationError:
                continue  # a record half-written by another version: not a live worker
        return out

    def _expire_worker(self, pipe: redis.client.Pipeline, worker_id: str, hb: float) -> None:
        ttl = max(int(hb * WORKER_TTL_FACTOR) + 1, 2)
        pipe.expire(keyspace.worker(worker_id), ttl)
        pipe.expire(keyspace.worker_batches(worker_id), ttl)


def _dump_metadata(metadata: Mapping[str, str]) -> str:
    return _METADATA.dump_json(dict(metadata)).decode()


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
    )
