"""Worker records in Redis: each worker's identity, heartbeat and batch counters (its leases:
:mod:`genq.leases`).

Part of :class:`genq.store.JobStore` (the base of both sides' stores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError
from redis.client import Pipeline

from genq import keyspace, scripts
from genq.schema import WorkerInfo, from_epoch
from genq.settings import WORKER_RECORD_TTL_S, WORKER_TTL_FACTOR

_WORKER_COUNTERS = ("batches", "items", "tokens", "busy_s")


@dataclass(frozen=True)
class BatchStats:
    """One forward-pass batch, for its worker's counters."""

    worker_id: str
    sequences: int
    items: int
    tokens: int
    busy_s: float = 0.0  # wall time the worker spent generating the batch (its write excluded)


class WorkerRecords:
    """Registers workers, refreshes their heartbeats, counts their batches."""

    redis: redis.Redis

    def _register_worker_scripts(self) -> None:
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)
        self._expire_persistent = self.redis.register_script(scripts.EXPIRE_PERSISTENT)

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
        """Messages waiting in a Celery queue (on both of its lists)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keyspace.celery_queue_lists(queue):
                pipe.llen(key)
            return sum(pipe.execute())

    def _count_batch(self, pipe: Pipeline, batch: BatchStats) -> None:
        worker, sizes = keyspace.worker(batch.worker_id), keyspace.worker_batches(batch.worker_id)
        pipe.hincrby(sizes, str(batch.sequences), 1)
        pipe.hincrby(worker, "batches", 1)
        pipe.hincrby(worker, "items", batch.items)
        pipe.hincrby(worker, "tokens", batch.tokens)
        if batch.busy_s > 0:
            pipe.hincrbyfloat(worker, "busy_s", batch.busy_s)
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

    def _expire_worker(self, pipe: Pipeline, worker_id: str, hb: float) -> None:
        ttl = _record_ttl_s(hb)
        pipe.expire(keyspace.worker(worker_id), ttl)
        pipe.expire(keyspace.worker_batches(worker_id), ttl)


def _record_ttl_s(heartbeat_s: float) -> int:
    return max(int(heartbeat_s * WORKER_TTL_FACTOR) + 1, WORKER_RECORD_TTL_S)
