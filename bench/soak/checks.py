"""Each job's results read back and checked: status completed, every item completed once and
none failed, results in input order with each index exactly once (both through the client and
by counting the results hash's fields), each result the prompt it was given."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from bench.soak.jobs import Job
from bench.soak.timeline import round2
from genq import keyspace
from genq.errors import BrokerUnavailableError, JobNotFoundError
from genq.producer.client import Client
from genq.schema import ItemResult, JobInfo, JobStatus

RETRY_S = 60.0  # how long end-of-run reads keep retrying an unreachable Redis
LISTED = 100  # indexes listed per kind of problem

T = TypeVar("T")


def retry(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            return call()
        except (BrokerUnavailableError, redis.exceptions.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@dataclass
class JobCheck:
    """What one job's read-back found."""

    job: Job
    info: JobInfo | None
    results: list[ItemResult]
    fields: list[str]  # the results hash's field names
    hash_len: int  # HLEN of the results hash
    seen: Counter[int] = field(default_factory=Counter)
    lost_indexes: list[int] = field(default_factory=list)
    dup_indexes: list[int] = field(default_factory=list)
    stray_fields: list[str] = field(default_factory=list)
    mismatched: list[int] = field(default_factory=list)
    out_of_order: int = 0  # results read back after one of a higher index
    duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.job.items

    @property
    def completed(self) -> bool:
        return self.info is not None and self.info.status is JobStatus.COMPLETED

    def problems(self) -> list[str]:
        """Every check the job fails (none: it passed)."""
        info, total = self.info, self.total
        found = {
            "not submitted": self.job.job_id is None,
            f"status {info.status.value if info else 'missing'}": not self.completed,
            "total differs": info is not None and info.total != total,
            "completed != total": info is None or info.completed != total,
            "failed items": info is not None and info.failed > 0,
            "lost": bool(self.lost_indexes),
            "duplicates": sum(self.duplicates.values()) > 0,
            "mismatched": bool(self.mismatched),
            "out of order": self.out_of_order > 0,
            "results hash != total": self.hash_len != total,
            "stray result fields": bool(self.stray_fields),
        }
        return [name for name, bad in found.items() if bad]

    def figures(self) -> dict[str, Any]:
        """The job's entry in soak.json's ``jobs``."""
        info, job = self.info, self.job
        return {
            **job.describe(),
            "job_id": job.job_id,
            "ok": not self.problems(),
            "problems": self.problems(),
            "status": info.status.value if info else "missing",
            "submitted_at_s": round2(job.submit_t),
            "ended_at_s": round2(job.end_t),
            "finished_after_s": (
                round2(job.end_t - job.submit_t)
                if job.end_t is not None and job.submit_t is not None
                else None
            ),
            "took_s": took_s(info),
            "completed": info.completed if info else 0,
            "failed": info.failed if info else 0,
            "results": len(self.seen),
            "results_hash_len": self.hash_len,
            "lost": len(self.lost_indexes),
            "lost_indexes": self.lost_indexes[:LISTED],
            "duplicates": sum(self.duplicates.values()),
            "duplicate_indexes": self.dup_indexes[:LISTED],
            "mismatched": len(self.mismatched),
            "mismatched_indexes": self.mismatched[:LISTED],
            "out_of_order": self.out_of_order,
            "stray_result_fields": self.stray_fields[:LISTED],
        }


def took_s(info: JobInfo | None) -> float | None:
    """Seconds from the job's creation to its end, by its record (Redis-side clocks)."""
    if info is None or info.finished_at is None:
        return None
    return round((info.finished_at - info.created_at).total_seconds(), 2)


def check_job(client: Client, job: Job) -> JobCheck:
    """Read ``job``'s status and every result back (retrying while Redis is unreachable)."""
    r = client.store.redis
    info: JobInfo | None = None
    results: list[ItemResult] = []
    fields: list[str] = []
    hash_len = 0
    job_id = job.job_id
    if job_id is not None:
        try:
            info = retry(lambda: client.status(job_id))
            results = retry(lambda: list(client.iter_results(job_id)))
            fields = [str(k) for k in retry(lambda: r.hkeys(keyspace.results(job_id)))]
            hash_len = int(retry(lambda: r.hlen(keyspace.results(job_id))))
        except JobNotFoundError:
            info, results, fields = None, [], []
    check = JobCheck(job, info, results, fields, hash_len)
    total, prompts = job.items, job.prompts
    check.seen = Counter(res.index for res in results)
    check.stray_fields = sorted(set(fields) - {str(i) for i in range(total)})
    check.lost_indexes = [i for i in range(total) if i not in check.seen]
    check.dup_indexes = sorted(i for i, c in check.seen.items() if c > 1)
    check.mismatched = [
        res.index
        for res in results
        if res.index >= total or res.prompt != prompts[res.index] or res.custom_id != str(res.index)
    ]
    indexes = [res.index for res in results]
    check.out_of_order = sum(1 for a, b in itertools.pairwise(indexes) if b <= a)
    counted = info.completed + info.failed if info else 0
    check.duplicates = {
        "indexes_seen_twice": len(check.dup_indexes),
        "counters_over_results": max(0, counted - len(check.seen)),
        "results_fields_over_total": max(0, len(fields) - total),
    }
    return check
