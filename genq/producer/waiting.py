"""Waiting on a job: its status polled until it ends, through Redis outages, and its results
followed as they are written (:meth:`Client.wait`, :meth:`Client.follow_results`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from genq.errors import (
    BrokerUnavailableError,
    JobNotFoundError,
    JobVanishedError,
    RedisAccessError,
    WaitTimeoutError,
)
from genq.schema import ItemResult, JobInfo
from genq.settings import DEFAULT_POLL_INTERVAL_S, WAIT_OUTAGE_TOLERANCE_S

READ_RETRY_S = 0.5  # an ended job's results read again this often while Redis is away

if TYPE_CHECKING:
    from genq.producer.client import Client


def polls(
    client: Client,
    job_id: str,
    timeout_s: float | None,
    poll_interval_s: float | None,
    on_progress: Callable[[JobInfo], None] | None,
) -> Iterator[JobInfo]:
    """The job's status, read every ``poll_interval_s`` until it ends (the last one yielded
    is terminal); raises as :meth:`Client.wait` says. The caller may take its time between
    two: the interval is slept only when it asks for the next one."""
    interval = poll_interval_s or DEFAULT_POLL_INTERVAL_S
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    outage_since: float | None = None
    seen = False
    while True:
        try:
            info = client.status(job_id)
        except RedisAccessError:
            raise  # refused, not away: waiting will not help
        except BrokerUnavailableError:
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > WAIT_OUTAGE_TOLERANCE_S:
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id}: Redis has been unreachable for "
                    f"{time.monotonic() - outage_since:.0f}s and the {timeout_s:g}s "
                    "timeout ran out; the job keeps running if Redis comes back with it"
                ) from None
            time.sleep(interval)
            continue
        except JobNotFoundError as e:
            if not seen:
                raise
            raise JobVanishedError(
                f"job {job_id} vanished from Redis while being waited on: Redis lost its "
                "data (it restarted without an append-only file, or was flushed); the job "
                "and its results are gone, submit it again"
            ) from e
        seen = True
        outage_since = None
        if on_progress is not None:
            on_progress(info)
        yield info
        if info.is_terminal:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"job {job_id} is still {info.status.value} after {timeout_s:g}s "
                f"({info.done}/{info.total} items done); it keeps running"
            )
        time.sleep(interval)


def follow(
    statuses: Iterator[JobInfo],
    read: Callable[[list[int]], dict[int, ItemResult]],
    page_size: int,
) -> Iterator[ItemResult]:
    """The job's results in input order, each as soon as it and every one before it are
    written; after the job ends (the last of ``statuses``), the rest, skipping items that
    never got one. ``read`` reads the results of some indexes (those it has)."""
    next_index = 0
    ahead: dict[int, ItemResult] = {}  # read, not yet yielded: past a gap
    outage_since: float | None = None
    done_when_read = -1  # the job's count of results at the last read
    for info in statuses:
        ended = info.is_terminal  # every result is written: a gap stays a gap
        if not ended and info.done == done_when_read:
            continue  # nothing written since: spare Redis the read
        done_when_read = info.done
        while next_index < info.total:
            window = range(next_index, min(next_index + page_size, info.total))
            try:
                ahead.update(read([i for i in window if i not in ahead]))
                outage_since = None
            except RedisAccessError:
                raise  # refused, not away: waiting will not help
            except BrokerUnavailableError:
                if not ended:
                    done_when_read = -1  # read again after the next status, whatever it says
                    break  # the next status read rides the outage out (or raises)
                # No status read follows the last one: ride it out here, as wait() would.
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > WAIT_OUTAGE_TOLERANCE_S:
                    raise
                time.sleep(READ_RETRY_S)
                continue
            for index in window:
                result = ahead.pop(index, None)
                if result is None and not ended:
                    break  # not written yet: wait for it
                next_index = index + 1
                if result is not None:
                    yield result
            if next_index < window.stop:
                break
