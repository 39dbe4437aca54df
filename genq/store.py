"""Job state in Redis: the only code that reads or writes genq's keys.

Every multi-key change is one Lua script, so counters, results and status never disagree, and a
redelivered message can never count an item twice (the first result written wins).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import TypeAdapter, ValidationError

from genq import keyspace
from genq.errors import (
    BrokerUnavailableError,
    DurabilityError,
    GenqError,
    JobNotFoundError,
    RedisAccessError,
)
from genq.schema import (
    GenerationParams,
    ItemResult,
    JobInfo,
    JobSpec,
    JobStatus,
    WorkerInfo,
    from_epoch,
)
from genq.settings import (
    DEFAULT_UNFINISHED_TTL_S,
    WORKER_RECORD_TTL_S,
    WORKER_TTL_FACTOR,
    redact_url,
)

_METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])

_TERMINAL_LUA = "{completed=true, failed=true, cancelled=true, expired=true}"

# A job past its deadline turns expired on first sight, by whoever looks (worker or producer).
# KEYS: job, results, attempts. ARGV[1]: now, ARGV[2]: ttl_s. Returns the status it has afterwards.
_EXPIRE_IF_DUE_LUA = """
local function expire_if_due()
  local fields = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
  local status, expires_at = fields[1], fields[2]
  if expires_at and (status == 'queued' or status == 'running')
      and tonumber(ARGV[1]) >= tonumber(expires_at) then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'finished_at', ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    redis.call('DEL', KEYS[3])
    return 'expired'
  end
  return status
end
"""

# KEYS: job, results, attempts. ARGV: now, ttl_s, then (index, ok, json) triples.
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
  redis.call('DEL', KEYS[3])
else
  -- results never outlive their job record, even when the job never ends
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return new_ok + new_failed
"""

# KEYS: job, results, attempts. ARGV: now, ttl_s, then item indexes. Moves a queued job to running;
# returns {status or false, indexes that already have a result}.
_ADMIT = (
    _EXPIRE_IF_DUE_LUA
    + """
local status = expire_if_due()
if not status then return {false, {}} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  status = 'running'
end
local done = {}
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then table.insert(done, tonumber(ARGV[i])) end
end
return {status, done}
"""
)

_EXPIRE = _EXPIRE_IF_DUE_LUA + "return expire_if_due()"

# KEYS: job, results, attempts. ARGV: now, ttl_s, retry ('1' or '0'), then item indexes.
# Counts an attempt for each item of a running job that was never started (or for every item,
# with retry = '1'). Returns {status or false, counts}: a count > 0 is this attempt's number;
# -n means the item was started n times before and was not counted now.
_START = (
    _EXPIRE_IF_DUE_LUA
    + """
local status = expire_if_due()
if status ~= 'queued' and status ~= 'running' then return {status, {}} end
local counts = {}
for i = 4, #ARGV do
  local before = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  if before == 0 or ARGV[3] == '1' then
    table.insert(counts, redis.call('HINCRBY', KEYS[3], ARGV[i], 1))
  else
    table.insert(counts, -before)
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
return {status, counts}
"""
)

# KEYS: worker, worker batches, workers index. ARGV: now, ttl_s, worker id. Refreshes a live
# worker's record; never recreates a removed or expired one as a partial hash.
_HEARTBEAT = """
-- a record that expired (Redis was away) may since have been half recreated by batch counters
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: job, results, attempts. ARGV: now, ttl_s, new status, error. Ends an unfinished job.
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
redis.call('DEL', KEYS[3])
return ARGV[3]
"""


# KEYS: kombu's unacked index. ARGV: now, then delivery tags. Renews the leases this worker
# holds; returns the tags that are no longer held (requeued after the lease expired).
_RENEW = """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


# KEYS: any. ARGV: ttl_s. Gives a TTL to the keys that have none (EXPIRE NX, before Redis 7).
_EXPIRE_PERSISTENT = """
for i = 1, #KEYS do
  if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return 0
"""

_WORKER_COUNTERS = ("batches", "items", "tokens")


@dataclass(frozen=True)
class BatchStats:
    """One forward-pass batch, for its worker's counters."""

    worker_id: str
    sequences: int
    items: int
    tokens: int


def explain_redis_error(error: redis.exceptions.RedisError, redis_url: str) -> GenqError | None:
    """The error to show a user for ``error`` (what went wrong, what to do, no password), or
    None when it is not about reaching Redis. :class:`RedisAccessError` when it is permanent."""
    url = redact_url(redis_url)
    if isinstance(error, redis.exceptions.AuthenticationError) or (
        isinstance(error, redis.exceptions.ResponseError)
        and ("auth" in str(error).lower() or "NOPERM" in str(error))
    ):
        return RedisAccessError(
            f"Redis at {url} refused the credentials; check the user and password in GENQ_REDIS_URL"
        )
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        tls_error = _tls_error(error)
        if tls_error is not None:
            return RedisAccessError(
                f"TLS connection to Redis at {url} failed: {tls_error}. To trust a private CA, "
                "add ssl_ca_certs=/path/to/ca.pem (PEM) to GENQ_REDIS_URL."
            )
        return BrokerUnavailableError(
            f"cannot reach Redis at {url}: is it running? Set GENQ_REDIS_URL (or --redis-url) "
            "to the server genq should use."
        )
    return None


def _tls_error(error: BaseException) -> str | None:
    """What went wrong in the TLS handshake behind a connection error, or None if nothing did."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate was not verified ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error {cause.reason or cause}"
        cause = cause.__cause__ or cause.__context__
    return None


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
        self._expire = client.register_script(_EXPIRE)
        self._start = client.register_script(_START)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._renew = client.register_script(_RENEW)
        self._expire_persistent = client.register_script(_EXPIRE_PERSISTENT)

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
        if spec.expires_in_s is not None:
            fields["expires_at"] = repr(now + spec.expires_in_s)
        with self.redis.pipeline(transaction=True) as pipe:
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
        if _due(fields.get("status"), fields.get("expires_at")):
            self._expire_job(job_id)
            return self.get(job_id)
        return _job_info(fields)

    def _expire_job(self, job_id: str) -> str | None:
        keys = _job_keys(job_id)
        status: str | None = self._expire(keys=keys, args=[repr(time.time()), self.result_ttl_s])
        return status

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

    def admit(self, job_id: str, indexes: Sequence[int]) -> tuple[JobStatus | None, set[int]]:
        """Mark the job running; return its status and which ``indexes`` already have a result.

        One round trip: a worker calls it for every message it receives.
        """
        keys = _job_keys(job_id)
        args: list[str | int] = [repr(time.time()), self.result_ttl_s, *indexes]
        status, done = self._admit(keys=keys, args=args)
        return (JobStatus(status) if status else None), {int(i) for i in done}

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
            counts = pipe.execute()
        return dict(zip(jobs, (int(c) for c in counts), strict=False))

    # --- workers --------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo, heartbeat_s: float) -> None:
        """Write the worker's identity (its counters, if any survived, are kept: worker ids are
        never reused, and a re-registration after a Redis outage must not zero them)."""
        fields: dict[Any, str | int] = info.model_dump(
            mode="json", exclude={"batch_sizes", "started_at", "last_seen", *_WORKER_COUNTERS}
        )
        fields["started_at"] = repr(info.started_at.timestamp())
        fields["last_seen"] = repr(time.time())
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keyspace.worker(info.id), mapping=fields)
            pipe.zadd(keyspace.workers_index(), {info.id: time.time()})
            self._expire_worker(pipe, info.id, heartbeat_s)
            pipe.execute()

    def heartbeat(self, worker_id: str, heartbeat_s: float) -> bool:
        """Refresh the worker's record; False when it is gone (re-register it then)."""
        now = time.time()
        ttl = _record_ttl_s(heartbeat_s)
        keys = [
            keyspace.worker(worker_id),
            keyspace.worker_batches(worker_id),
            keyspace.workers_index(),
        ]
        return bool(self._heartbeat(keys=keys, args=[repr(now), ttl, worker_id]))

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue."""
        length: int = self.redis.llen(keyspace.celery_queue(queue))  # type: ignore[assignment]
        return length

    def renew_leases(self, delivery_tags: Sequence[str]) -> list[str]:
        """Renew the leases on messages a worker holds; return the tags it no longer holds.

        A lease not renewed for GENQ_LEASE_S is expired: kombu requeues the message (the
        worker is presumed dead) and the old holder must neither run the rest of it nor ack it.
        """
        if not delivery_tags:
            return []
        lost = self._renew(
            keys=[keyspace.celery_unacked_index()], args=[time.time(), *delivery_tags]
        )
        return [str(tag) for tag in lost]

    def _count_batch(self, pipe: redis.client.Pipeline, batch: BatchStats) -> None:
        worker, sizes = keyspace.worker(batch.worker_id), keyspace.worker_batches(batch.worker_id)
        pipe.hincrby(sizes, str(batch.sequences), 1)
        pipe.hincrby(worker, "batches", 1)
        pipe.hincrby(worker, "items", batch.items)
        pipe.hincrby(worker, "tokens", batch.tokens)
        # Counters written after the record expired must not outlive a worker that dies
        # before its next heartbeat re-registers it (a live record keeps its TTL).
        self._expire_persistent(keys=[worker, sizes], args=[WORKER_RECORD_TTL_S], client=pipe)

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
        ttl = _record_ttl_s(hb)
        pipe.expire(keyspace.worker(worker_id), ttl)
        pipe.expire(keyspace.worker_batches(worker_id), ttl)


def _dump_metadata(metadata: Mapping[str, str]) -> str:
    return _METADATA.dump_json(dict(metadata)).decode()


def _record_ttl_s(heartbeat_s: float) -> int:
    return max(int(heartbeat_s * WORKER_TTL_FACTOR) + 1, WORKER_RECORD_TTL_S)


def _job_keys(job_id: str) -> list[str]:
    """The keys every job script takes, in order."""
    return [keyspace.job(job_id), keyspace.results(job_id), keyspace.attempts(job_id)]


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
    )
