"""The worker's side of the job store: admit a message against its job's record, count the
attempts of the items it starts. Results are written through :meth:`JobStore.record`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from redis.commands.core import Script

from genq.feeder import Feeder, log_refill_failure
from genq.leases import LEASE, Lease, unacked_index_key, unacked_key
from genq.pipelines import script_pipeline
from genq.schema import GenerationParams, JobStatus
from genq.store import JobStore, job_keys


@dataclass(frozen=True)
class Admission:
    """What a job's record says about a message a worker received."""

    status: JobStatus | None  # None: no such job
    total: int  # the job's item count
    params: GenerationParams | None  # the job's default parameters (None when refused)
    done: set[int]  # the message's indexes that already have a result
    bad_index: str | None  # the first index that is not the job's (nothing was changed)


class WorkStore(JobStore):
    """Jobs as a worker sees them: each message admitted, each item's attempts counted."""

    @cached_property
    def _lease(self) -> Script:
        return self.redis.register_script(LEASE)

    def admit(
        self,
        job_id: str,
        indexes: Sequence[int],
        refill: Feeder | None = None,
        lease: Lease | None = None,
    ) -> Admission:
        """Check a message's item ``indexes`` against the job's record and mark the job
        running; return what the worker needs to run them (see :class:`Admission`).

        One round trip: a worker calls it for every message it receives; ``lease`` (the
        message's, where kombu's keys are on this Redis) is written first in it, and
        ``refill`` (a feeder on this same Redis) tops the queue up in it too. A lease that
        could not be written raises, as the admission would; a refill the server refuses is
        logged, not raised (the next message's or heartbeat's refill tries again); a lost
        connection fails them all, as it would have failed the admission alone. A message with
        an index that is not one of the job's changes nothing.
        """
        now = repr(time.time())
        keys = job_keys(job_id)
        args: list[str | int] = [now, self.result_ttl_s, *indexes]
        pipe = script_pipeline(self.redis)
        with pipe:
            if lease is not None:
                lease_keys = [unacked_key(), unacked_index_key()]
                self._lease(keys=lease_keys, args=[lease.tag, now, lease.message], client=pipe)
            if refill is not None:
                refill.refill_in(pipe)
            self._admit(keys=keys, args=args, client=pipe)
            replies = pipe.execute(raise_on_error=False)
        if lease is not None:
            leased, *replies = replies
            if isinstance(leased, Exception):
                raise leased
        if refill is not None and isinstance(replies[0], Exception):
            log_refill_failure(replies[0])
        admitted = replies[-1]
        if isinstance(admitted, Exception):
            raise admitted
        status, total, params, done, bad = admitted
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
        with script_pipeline(self.redis) as pipe:
            for job_id in jobs:
                args: list[str | int] = [now, self.result_ttl_s, int(retry), *items[job_id]]
                self._start(keys=job_keys(job_id), args=args, client=pipe)
            replies = pipe.execute()
        statuses: dict[str, JobStatus | None] = {}
        attempts: dict[tuple[str, int], int] = {}
        for job_id, (status, counts) in zip(jobs, replies, strict=True):
            statuses[job_id] = JobStatus(status) if status else None
            for index, count in zip(items[job_id], counts, strict=False):
                attempts[(job_id, index)] = int(count)
        return statuses, attempts
