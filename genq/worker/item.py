"""One prompt on its way through a worker: the engine's view of it plus everything the worker
knows about it (the message it came in, its place in the pool, its tries so far).

The consumer thread creates items as messages arrive (:meth:`Scheduler.add`); the pool, the
engine loop and the runner then pass the same object around, and each updates the part of its
state it owns:

* the pool (:class:`~genq.worker.scheduler.Scheduler`): ``seq``, ``arrived``, ``status``
  (WAITING, DEFERRED, RUNNING, and FINISHED or RELEASED at the end), and, through its ordering
  policy, ``turn``;
* the engine loop: ``attempts`` (counted in Redis), ``started_at`` (continuous batches), and
  ``not_before`` while Redis is away;
* the runner: ``started_at`` (static batches), and ``not_before`` after a failed try, from the
  retry policy below.

Engines never see an item: they take and return its :class:`Prepared`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import Enum

from genq.schema import Priority
from genq.worker.engines.base import Prepared


@dataclass(eq=False)
class Delivery:
    """One queue message: acknowledged once every one of its items has ended."""

    tag: str  # the broker's delivery tag, which its lease is renewed under
    job_id: str
    remaining: int
    ack: Callable[[], None]
    done: bool = False
    priority: Priority = Priority.NORMAL  # the job's, carried by the message
    # Its lease goes with the results being written now (its ack, in their script): the
    # heartbeat stops renewing it, and a lease found gone meanwhile is not a lost one.
    settling: bool = False


class ItemStatus(Enum):
    """Where an item is in its life on this worker."""

    WAITING = "waiting"  # in the pool, may join the next batch
    DEFERRED = "deferred"  # in the pool, waiting out a retry's backoff (``not_before``)
    RUNNING = "running"  # taken from the pool into a batch
    FINISHED = "finished"  # ended here: a result was written, or its job ended
    RELEASED = "released"  # left the pool unfinished: its message goes back to the broker


@dataclass(eq=False)
class Item:
    """A prompt in the worker's pool and batches. Compared and hashed by identity."""

    prepared: Prepared
    delivery: Delivery
    seq: int = 0  # arrival order in the pool
    arrived: float = 0.0  # monotonic time it entered the pool
    priority: Priority = Priority.NORMAL
    status: ItemStatus = ItemStatus.WAITING
    attempts: int = 0  # tries started so far (the loop reads the count from Redis)
    not_before: float = 0.0  # monotonic time before which it does not run (a retry's backoff)
    started_at: float = 0.0  # wall-clock time its current try started, for its result's timing
    turn: int = 0  # its turn among the jobs in the pool: set by the ordering policy
    key: Hashable = field(init=False)  # items share a batch only when their keys are equal

    def __post_init__(self) -> None:
        self.key = self.prepared.batch_key

    @property
    def job_id(self) -> str:
        return self.prepared.job_id

    @property
    def index(self) -> int:
        return self.prepared.item.index

    @property
    def rows(self) -> int:
        """Sequences this item adds to a forward pass."""
        return self.prepared.rows

    def retryable(self, max_attempts: int) -> bool:
        """Whether a failed try may be followed by another (``max_attempts`` tries in all)."""
        return self._tries < max_attempts

    def next_retry_delay(self, backoff_s: float) -> float:
        """Seconds to wait before the next try: ``backoff_s`` after the first, doubling with
        each try since."""
        return float(backoff_s * 2 ** (self._tries - 1))

    @property
    def _tries(self) -> int:
        # A try that failed happened, even where Redis was away and could not count it.
        return max(self.attempts, 1)
