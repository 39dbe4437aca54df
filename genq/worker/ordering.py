"""Which waiting item the worker's pool serves next: a sort key on each item, by a named policy.

The pool builds every batch around the item with the smallest key (see
:class:`~genq.worker.scheduler.Scheduler`); the batching policy then decides which of the
others can share its forward pass. Keys never change on a retry, so a retried item keeps its
place.

* ``fifo`` (:class:`FifoOrder`): first come, first served.
* ``fair`` (:class:`FairOrder`, the default): the most urgent priority first, jobs taking turns
  within a priority, and waiting items moving up a priority level as they age.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from genq.schema import PRIORITIES
from genq.settings import DEFAULT_PRIORITY_AGING_S, Settings
from genq.worker.item import Item

_RANK = {priority: priority.rank for priority in PRIORITIES}  # keys are computed per cut


class OrderingPolicy(Protocol):
    """Orders the pool. Called under the pool's lock, so implementations need none."""

    def admit(self, item: Item) -> None:
        """``item`` entered the pool (once: not again on a retry); set its ``turn``."""
        ...

    def taken(self, items: Sequence[Item]) -> None:
        """``items`` left the pool for a batch."""
        ...

    def key(self, item: Item, now: float) -> tuple[float, ...]:
        """``item``'s place at monotonic time ``now``: the smallest is served first."""
        ...


class FifoOrder:
    """Items in the order they arrived in the pool."""

    def admit(self, item: Item) -> None:
        item.turn = item.seq

    def taken(self, items: Sequence[Item]) -> None:
        pass

    def key(self, item: Item, now: float) -> tuple[float, ...]:
        return (item.seq,)


class FairOrder:
    """Priority first, then jobs in turn, then arrival.

    *Priority* is the job's, less one level for each ``aging_s`` the item has waited in the
    pool, so that low work is never starved. *Turns* are per job, virtual-start style: a job's
    items take consecutive turns, starting no earlier than the latest turn already served, so
    a job that arrives behind another one's buffered items alternates with them instead of
    waiting for all of them.
    """

    def __init__(self, aging_s: float = DEFAULT_PRIORITY_AGING_S) -> None:
        self.aging_s = aging_s
        self._next_turn: dict[str, int] = {}  # job -> the turn its next item takes
        self._served = 0  # the latest turn taken into a batch

    def admit(self, item: Item) -> None:
        item.turn = max(self._next_turn.get(item.job_id, 0), self._served)
        self._next_turn[item.job_id] = item.turn + 1

    def taken(self, items: Sequence[Item]) -> None:
        if not items:
            return
        top = max(item.turn for item in items)
        # The clock moves on even when a batch took only newcomers at the current turn: else a
        # stream of one-item jobs would hold every waiting job's later turns back forever.
        self._served = top if top > self._served else self._served + 1
        # A job whose next turn is already served needs no entry: admit gives it _served.
        self._next_turn = {j: t for j, t in self._next_turn.items() if t > self._served}

    def key(self, item: Item, now: float) -> tuple[float, ...]:
        return (self.rank(item, now), item.turn, item.seq)

    def rank(self, item: Item, now: float) -> int:
        """The item's priority rank (0 is the most urgent) after ageing."""
        rank = _RANK[item.priority]
        if now > item.arrived:
            rank -= int((now - item.arrived) // self.aging_s)
        return rank if rank > 0 else 0


def policy_for(settings: Settings) -> OrderingPolicy:
    """The ordering policy GENQ_SCHEDULING names: ``fair`` or ``fifo``."""
    if settings.scheduling == "fifo":
        return FifoOrder()
    if settings.scheduling == "fair":
        return FairOrder(settings.priority_aging_s)
    raise ValueError(f"unknown scheduling policy {settings.scheduling!r} (fair or fifo)")
