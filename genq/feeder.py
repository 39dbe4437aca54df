"""The fair feeder: jobs wait in their own pending lists, and the Celery queue is refilled from
them in priority and fair-share order, a few messages at a time.

A producer does not push a job's messages onto the Celery queue: it *stages* them on the job's
pending list (``genq:sched:{queue}:pending:{job}``). One Lua script,
:data:`genq.feeder_scripts.REFILL`, moves messages from pending lists to the Celery queue
until it holds GENQ_FEED_DEPTH messages, or GENQ_FEED_DEPTH x 16 prompts in fewer, larger
messages (one at least):

* **priority**: the highest level with pending work goes first (``high`` messages go to the
  head of the queue, even a full one); a level passed over GENQ_STARVE_AFTER_MESSAGES
  messages in a row gets the next one, so ``low`` work under sustained ``normal`` load still
  gets 1 message in 10;
* **tenants** within a level: the one with the least *virtual time* goes next, and each message
  adds its items / the tenant's weight to it (weighted fair queueing; a tenant that was idle
  starts at the level's clock, so it banks no credit);
* **jobs** within a tenant: round-robin, one message each.

Anyone may refill: the producer after staging, and every worker each time it takes a message
and on every heartbeat, so no single process is needed. A message moves atomically from its
pending list to the Celery queue, where kombu's leases and genq's exactly-once results take
over unchanged (docs/reliability.md): the feeder only decides *when* a message is queued.
Messages of cancelled (or failed) jobs are dropped when their turn comes; an expired job's
still go, so that workers give each of its items its ``expired`` result.

**A results store of its own** (GENQ_RESULTS_URL, another Redis than the broker's): the job
records are not on this Redis, so the scripts read none (ARGV[8] = '0'). Cancelling drops a
job's pending messages explicitly (:meth:`Feeder.drop`, which every cancel calls) and leaves a
mark that refuses the job's later stagings; a failed job's messages still reach workers, which
skip them (the worker reads the job's status when it admits a message). The staging number
and the pending lists' lifetime, kept on the job's record otherwise, live on this Redis.
Tenants' weights are read here, so :func:`write_policy` is given both Redis servers then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from genq import keyspace
from genq.connection import stores_split
from genq.feeder_scripts import DROP, MARK_TTL_S, REFILL, STAGE
from genq.pipelines import ScriptPipeline
from genq.schema import TERMINAL, JobStatus, Priority, TenantPolicy
from genq.settings import Settings
from genq.store import as_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingJob:
    """A job with messages not yet in the Celery queue."""

    job_id: str
    priority: Priority
    tenant: str
    items: int  # items in its pending messages


@dataclass(frozen=True)
class QueueView:
    """What waits on one queue: pending jobs, and messages ready in the Celery queue."""

    jobs: list[PendingJob]
    ready_messages: int  # in the Celery queue, for the next worker that takes one

    def items_at(self, priority: Priority, tenant: str | None = None) -> int:
        return sum(
            j.items
            for j in self.jobs
            if j.priority is priority and (tenant is None or j.tenant == tenant)
        )

    def pending_items(self, job_id: str) -> int:
        """``job_id``'s items not yet handed to the Celery queue."""
        return sum(j.items for j in self.jobs if j.job_id == job_id)

    def ahead_of(self, job_id: str) -> int | None:
        """Items pending at a more urgent level than ``job_id``'s (they go first); None when
        the job has nothing pending."""
        mine = next((j for j in self.jobs if j.job_id == job_id), None)
        if mine is None:
            return None
        return sum(j.items for j in self.jobs if j.priority.rank < mine.priority.rank)


class Feeder:
    """Stages jobs' messages and refills one Celery queue from them (see the module doc)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, *, jobs_here: bool | None = None
    ) -> None:
        """``client`` is the broker's Redis (GENQ_REDIS_URL). ``jobs_here``: whether the job
        records are on it too (default: unless GENQ_RESULTS_URL names another Redis)."""
        self.redis = client
        self.queue = settings.queue
        if jobs_here is None:
            jobs_here = not stores_split(settings)
        self.jobs_here = jobs_here
        self._prefix = keyspace.sched_prefix(settings.queue)
        self._lists = keyspace.celery_queue_lists(settings.queue)
        self._common = [
            self._prefix,
            *self._lists,
            keyspace.job_prefix(),
            keyspace.tenant_prefix(),
            str(settings.feed_depth),
            str(settings.starve_after_messages),
            "1" if jobs_here else "0",
            str(settings.unfinished_ttl_s),
            str(MARK_TTL_S),
        ]
        self._refill = client.register_script(REFILL)
        self._stage = client.register_script(STAGE)
        self._drop = client.register_script(DROP)

    def stage(
        self,
        job_id: str,
        priority: Priority,
        tenant: str,
        batch: int,
        entries: Sequence[tuple[int, str]],
    ) -> bool:
        """Append ``entries`` ((items, kombu payload) of the job's next messages) to the job's
        pending list and refill; False when the job was cancelled meanwhile (nothing staged).

        ``batch`` numbers the job's stagings from 1: one already staged is not staged again."""
        args = [*self._common, job_id, priority.value, tenant, str(batch)]
        args += [f"{items}|{payload}" for items, payload in entries]
        return int(self._stage(args=args)) >= 0

    def refill(self) -> int:
        """Top the Celery queue up to GENQ_FEED_DEPTH messages in fair order; returns the
        messages moved."""
        return int(self._refill(args=self._common))

    def refill_in(self, pipe: ScriptPipeline) -> None:
        """Queue a :meth:`refill` on ``pipe`` (a pipeline on this feeder's Redis), to ride in
        the round trip of another call: a worker refills with each message it admits."""
        self._refill(args=self._common, client=pipe)

    def drop(self, job_id: str) -> bool:
        """Drop a job's pending messages (it was cancelled): they will never be queued."""
        return bool(self._drop(args=[*self._common, job_id]))

    def ready_messages(self) -> int:
        """Messages waiting in the Celery queue (on both of its lists)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self._lists:
                pipe.llen(key)
            return sum(pipe.execute())

    def view(self) -> QueueView:
        """Every job with pending messages, and the messages ready in the Celery queue."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._prefix + "active")
            pipe.hgetall(self._prefix + "queued")
            for key in self._lists:
                pipe.llen(key)
            active, queued, *lengths = pipe.execute()
        ready = sum(lengths)
        jobs: list[PendingJob] = []
        for job_id, where in active.items():
            level, _, tenant = as_text(where).partition("\t")
            try:
                priority = Priority(level)
            except ValueError:  # written by another version: not ours to show
                continue
            items = int(queued.get(job_id, 0))
            jobs.append(PendingJob(as_text(job_id), priority, tenant, max(items, 0)))
        jobs.sort(key=lambda j: (j.priority.rank, j.tenant, j.job_id))
        return QueueView(jobs, int(ready))


def log_refill_failure(error: Exception) -> None:
    """A refill Redis refused or could not run: logged, never raised (the next message's or
    heartbeat's refill tries again)."""
    log.warning("could not refill the queue from the jobs' pending lists: %s", error)


def write_policy(client: redis.Redis, tenant: str, policy: TenantPolicy) -> None:
    """Set ``tenant``'s weight and quotas (read by every producer and every refill): on the
    results store (quotas, ``genq tenants``) and, when that is another Redis, on the broker's
    too (the refill's weights): the caller writes each."""
    key = keyspace.tenant_policy(tenant)
    fields = {k: str(v) for k, v in policy.model_dump(exclude_none=True).items()}
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.sadd(keyspace.tenant_policies(), tenant)
        pipe.execute()


def remove_policy(client: redis.Redis, tenant: str) -> None:
    """Back to the defaults for ``tenant``: weight 1, no quotas."""
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keyspace.tenant_policy(tenant))
        pipe.srem(keyspace.tenant_policies(), tenant)
        pipe.execute()


def read_policies(client: redis.Redis) -> dict[str, TenantPolicy]:
    """Every tenant that has a policy, by name."""
    names = sorted(as_text(n) for n in client.smembers(keyspace.tenant_policies()))  # type: ignore[union-attr]
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keyspace.tenant_policy(name))
        rows = pipe.execute()
    policies = {}
    for name, row in zip(names, rows, strict=True):
        fields = {as_text(k): as_text(v) for k, v in row.items()}
        policies[name] = TenantPolicy(
            weight=float(fields.get("weight", 1)),
            max_queued_items=int(fields["max_queued_items"])
            if "max_queued_items" in fields
            else None,
            max_jobs_in_progress=int(fields["max_jobs_in_progress"])
            if "max_jobs_in_progress" in fields
            else None,
        )
    return policies


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant's quotas count now."""

    jobs_in_progress: int
    queued_items: int  # items not yet done in those jobs


def read_usage(client: redis.Redis, tenant: str) -> TenantUsage:
    """The tenant's unfinished jobs and their items not yet done (what its quotas count)."""
    ids = [as_text(i) for i in client.smembers(keyspace.tenant_unfinished(tenant))]  # type: ignore[union-attr]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keyspace.job(job_id), "status", "total", "completed", "failed")
        rows = pipe.execute()
    jobs = items = 0
    for status, total, completed, failed in rows:
        if status is None or JobStatus(as_text(status)) in TERMINAL:
            continue
        jobs += 1
        items += int(total) - int(completed or 0) - int(failed or 0)
    return TenantUsage(jobs, items)
