"""The per-second samples: every job's counters (summed over the jobs, and each job's when there
are several), the queue, each worker's item counter and RSS, and two checks on what workers
report while Redis comes and goes.

The checks: a serving worker must stay listed by `genq workers` (its heartbeat re-registers it
after a Redis restart), and a worker's item counter should never go down. It still can: the
counters live in the worker's record, which expires a few heartbeats after the last one (4 s at
the soak's --heartbeat-s 1), so an outage that long loses them and the re-registered record
starts from zero. Both are figures of the report (an unlisted worker is a timeline event too);
a counter that went down is carried over, so the re-run estimate stays right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from bench.soak.jobs import Job
from bench.soak.processes import Workers
from bench.soak.timeline import Timeline
from genq import keyspace, leases
from genq.errors import BrokerUnavailableError, JobNotFoundError
from genq.producer.client import Client
from genq.schema import WorkerInfo
from genq.settings import Settings

UNLISTED_SAMPLES = 5  # a serving worker missing from `genq workers` this many samples in a row
COUNTER_GRACE_S = 10.0  # keep reading a stopped worker's counters this long (record TTL ~4 s)


@dataclass
class WorkerCount:
    """A worker's ``items`` counter as sampled, carried across resets."""

    before_resets: int = 0  # what it had counted before its last reset
    last: int = 0
    resets: int = 0

    def update(self, value: int) -> None:
        if value < self.last:
            self.before_resets += self.last
            self.resets += 1
        self.last = value

    @property
    def total(self) -> int:
        return self.before_resets + self.last


class Sampler:
    """Takes the samples; keeps what the report needs from them."""

    def __init__(
        self,
        timeline: Timeline,
        workers: Workers,
        client: Client,
        settings: Settings,
        jobs: list[Job],
    ) -> None:
        self.timeline = timeline
        self.workers = workers
        self.client = client
        self.settings = settings
        self.jobs = jobs  # each sample updates the submitted ones' info
        self.samples: list[dict[str, Any]] = []
        self.broker_down_since: float | None = None
        self.broker_outages: list[tuple[float, float]] = []
        self.counts: dict[str, WorkerCount] = {}  # by worker id
        self.job_missing_samples = 0

    def done(self) -> int:
        """Items done, over every job (as of the latest sample that read them)."""
        return sum(job.done for job in self.jobs)

    def broker(self, ok: bool) -> None:
        t = self.timeline.now()
        if not ok and self.broker_down_since is None:
            self.broker_down_since = t
            self.timeline.event("redis_unreachable")
        elif ok and self.broker_down_since is not None:
            self.broker_outages.append((self.broker_down_since, t))
            self.timeline.event("redis_reachable", after_s=round(t - self.broker_down_since, 2))
            self.broker_down_since = None

    def check_listed(self, listed: set[str]) -> None:
        """Note serving workers that `genq workers` does not list (and when they return)."""
        for run in self.workers.serving():
            if run.worker_id in listed:
                if run.unlisted_streak >= UNLISTED_SAMPLES:
                    self.timeline.event(
                        "worker_listed_again", worker=run.name, worker_id=run.worker_id
                    )
                run.unlisted_streak = 0
                continue
            run.unlisted_streak += 1
            if run.unlisted_streak == UNLISTED_SAMPLES:
                run.unlisted_events += 1
                assert run.worker_id is not None
                try:  # what its record holds instead (evidence for the report)
                    record = self.client.store.redis.hgetall(keyspace.worker(run.worker_id))
                except redis.exceptions.RedisError:
                    record = None
                self.timeline.event(
                    "worker_unlisted",
                    worker=run.name,
                    worker_id=run.worker_id,
                    record=sorted(record) if isinstance(record, dict) else record,
                )

    def read_jobs(self, row: dict[str, Any]) -> bool:
        """Read every submitted job's status into it; False when none of them is found (the
        row says so). A job not found is counted and is a timeline event."""
        found = 0
        for job in self.jobs:
            if job.job_id is None:
                continue
            try:
                job.info = self.client.status(job.job_id)
                found += 1
            except JobNotFoundError:
                self.job_missing_samples += 1
                self.timeline.event("job_missing", job_id=job.job_id)
                row.setdefault("jobs_missing", []).append(job.number)
        if not found:
            row.pop("jobs_missing", None)
            row["redis"] = "job missing"
        return found > 0

    def job_figures(self, row: dict[str, Any]) -> None:
        """The jobs' counters: the job's own with one job (as ever), their sums with several
        (the status is the shared one, or ``running``) and each job's as [status, completed,
        failed] under ``jobs``."""
        infos = [job.info for job in self.jobs if job.info is not None]
        statuses = {info.status.value for info in infos}
        row.update(
            status=statuses.pop() if len(statuses) == 1 else "running",
            completed=sum(info.completed for info in infos),
            failed=sum(info.failed for info in infos),
        )
        if len(self.jobs) > 1:
            row["jobs"] = {
                str(job.number): [job.info.status.value, job.info.completed, job.info.failed]
                for job in self.jobs
                if job.info is not None
            }

    def read_workers(self, t: float) -> tuple[list[WorkerInfo], dict[str, int], int, int]:
        """Listed workers, every known worker's item counter, queued and unacked messages."""
        workers = self.client.workers()
        # Counters read from each known worker's hash as well: a worker that has just
        # exited (or whose record is missing or partial) is not listed by workers(), but
        # its counter may have moved since the last sample.
        known = [
            run.worker_id
            for run in self.workers.runs
            if run.worker_id is not None
            and (run.exit_t is None or t - run.exit_t < COUNTER_GRACE_S)
        ]
        # The queue and its leases are on the broker; worker records on the results store
        # (the same Redis unless GENQ_RESULTS_URL names another).
        with self.client.broker.pipeline(transaction=False) as pipe:
            for key in keyspace.celery_queue_lists(self.settings.queue):
                pipe.llen(key)
            pipe.zcard(leases.unacked_index_key())
            urgent, other, unacked = pipe.execute()
        with self.client.store.redis.pipeline(transaction=False) as pipe:
            for worker_id in known:
                pipe.hget(keyspace.worker(worker_id), "items")
            raw_items = pipe.execute() if known else []
        queued = urgent + other
        items = {w.id: w.items for w in workers}
        for worker_id, value in zip(known, raw_items, strict=True):
            if value is not None:
                items[worker_id] = max(items.get(worker_id, 0), int(value))
        return workers, items, queued, unacked

    def sample(self) -> None:
        t = self.timeline.now()
        row: dict[str, Any] = {"t": round(t, 2)}
        try:
            found = self.read_jobs(row)
            if found:
                workers, items, queued, unacked = self.read_workers(t)
        except (BrokerUnavailableError, redis.exceptions.RedisError):
            self.broker(False)
            row.pop("jobs_missing", None)
            row["redis"] = "unreachable"
        else:
            if found:
                self.broker(True)
                for worker_id, value in items.items():
                    self.counts.setdefault(worker_id, WorkerCount()).update(value)
                self.check_listed({w.id for w in workers})
                self.job_figures(row)
                row.update(
                    queued_messages=queued,
                    unacked_messages=unacked,
                    workers=items,
                    listed=len(workers),
                )
        row["rss_mb"] = self.workers.sample_memory(t)
        self.samples.append(row)

    def longest_stall(self, since: float) -> float:
        """Longest time, after ``since`` (the submit), in which no item got a result (the wait
        for leases of killed workers to expire, Redis being away, no worker ready...)."""
        longest, last_done = 0.0, -1
        for row in self.samples:
            if "completed" not in row:
                continue
            done = row["completed"] + row["failed"]
            if done != last_done:
                longest = max(longest, row["t"] - since)
                since, last_done = row["t"], done
        return round(longest, 1)
