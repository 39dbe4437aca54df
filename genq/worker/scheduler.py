"""The worker's pool of buffered prompts, from which the engine loop draws its batches.

Messages (chunks of prompts, from any number of jobs) are admitted by the consumer thread as
they arrive; the engine thread takes one batch at a time, so batches are cut across messages
and jobs and a small job's prompts join the next batch instead of waiting for a big job's
message to be finished. A message is acknowledged when the last of its prompts has a result.

Order: an ordering policy (:mod:`genq.worker.ordering`) gives every waiting item a sort key;
the batch is built around the first item by that key, from items that can share its forward
pass, sorted so that little is padded.

A message the worker can no longer acknowledge (its lease was lost, or the broker connection
it came on was closed) is *released*: its waiting prompts leave the pool, and the ones already
in a batch still finish and write their results, but it is never acknowledged: the broker
hands it to a worker again, which skips the items that have results (unless the results that
ended its last items took its lease with them: see ``Delivery.settling``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from functools import partial

from genq.worker.batching import plan_batches
from genq.worker.engines.base import Prepared
from genq.worker.item import Delivery, Item, ItemStatus
from genq.worker.ordering import FifoOrder, OrderingPolicy

WINDOW_FACTOR = 4  # batches are cut from the first WINDOW_FACTOR x max_batch_size candidates


class Scheduler:
    """Thread-safe pool of prompts; ``next_batch`` blocks until a batch is worth running.

    ``order`` ranks the waiting items: arrival order unless given (the worker passes the
    policy GENQ_SCHEDULING names, :func:`genq.worker.ordering.policy_for`).
    """

    def __init__(
        self,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: int,
        order: OrderingPolicy | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.order: OrderingPolicy = order if order is not None else FifoOrder()
        # seq -> item, WAITING or DEFERRED (a retry waiting out its backoff)
        self._pool: dict[int, Item] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._held: dict[str, Delivery] = {}  # tag -> delivery admitted, not finished

    def add(self, delivery: Delivery, items: list[Prepared]) -> list[Item]:
        """Admit a message's runnable items (returned as pool items); ack the message now if
        it has none left to run."""
        if delivery.remaining == 0:
            self._finish(delivery)
            return []
        now = time.monotonic()
        admitted = []
        with self._cond:
            if delivery.tag in self._held:
                # kombu reuses a message's delivery tag on redelivery: the same message came
                # back while its earlier delivery is still here. Only the new one may be acked.
                self._release([delivery.tag])
            self._held[delivery.tag] = delivery
            for prepared in items:
                seq = next(self._seq)
                item = Item(prepared, delivery, seq=seq, arrived=now, priority=delivery.priority)
                self.order.admit(item)
                self._pool[item.seq] = item
                admitted.append(item)
            self._cond.notify_all()
        return admitted

    def pending(self) -> int:
        """Prompts waiting for a batch (retries waiting out their backoff included)."""
        with self._cond:
            return len(self._pool)

    def held(self) -> int:
        """Messages admitted whose prompts have not all ended."""
        with self._cond:
            return len(self._held)

    def unfinished_items(self) -> int:
        """Items of the messages held that have not ended (waiting or in a batch)."""
        with self._cond:
            return sum(delivery.remaining for delivery in self._held.values())

    def held_tags(self) -> list[str]:
        """Delivery tags of the messages held, whose leases the heartbeat renews (not those
        whose lease ends with the results being written)."""
        with self._cond:
            return [tag for tag, delivery in self._held.items() if not delivery.settling]

    def next_batch(self) -> list[Item] | None:
        """The next batch to run, or None once the scheduler is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                runnable, next_retry_s = self._runnable(now)
                if not runnable:
                    self._cond.wait(next_retry_s)
                    continue
                ordered = sorted(runnable, key=partial(self.order.key, now=now))
                first = ordered[0]
                group = [i for i in ordered if i.key == first.key]
                rows = sum(i.rows for i in group)
                wait_s = first.arrived + self.max_wait_s - now
                if rows < self.max_batch_size and wait_s > 0:
                    # A lone prompt waits at most max_wait_ms for neighbours.
                    self._cond.wait(wait_s if next_retry_s is None else min(wait_s, next_retry_s))
                    continue
                return self._take(self._cut(first, group[: self.max_batch_size * WINDOW_FACTOR]))

    def take(
        self, max_rows: int, fits: Callable[[list[Prepared]], bool], wait: bool
    ) -> list[Item] | None:
        """The first waiting prompts by the ordering policy, within ``max_rows``, that ``fits``
        accepts; None once closed.

        For a continuous batch: with ``wait`` (the engine is idle) block for the first prompt
        and give it max_wait_ms to gather neighbours; without, return at once.
        """
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                runnable, next_retry_s = self._runnable(now)
                if not runnable:
                    if not wait:
                        return []
                    self._cond.wait(next_retry_s)
                    continue
                ordered = sorted(runnable, key=partial(self.order.key, now=now))
                wait_s = ordered[0].arrived + self.max_wait_s - now
                if wait and wait_s > 0 and sum(i.rows for i in runnable) < max_rows:
                    self._cond.wait(wait_s)
                    continue
                chosen: list[Item] = []
                used_rows = 0
                for item in ordered:
                    p = item.prepared
                    ok = used_rows + p.rows <= max_rows and fits([i.prepared for i in chosen] + [p])
                    if not ok and (chosen or not wait):
                        break  # an item too big for any batch still runs, alone, when idle
                    chosen.append(item)
                    used_rows += p.rows
                return self._take(chosen)

    def _runnable(self, now: float) -> tuple[list[Item], float | None]:
        """Items that may run now (retries whose backoff is over included), and the seconds
        until the next deferred one may (None when there is none)."""
        runnable: list[Item] = []
        next_due = float("inf")
        for item in self._pool.values():
            if item.status is ItemStatus.DEFERRED:
                if item.not_before > now:
                    next_due = min(next_due, item.not_before)
                    continue
                item.status = ItemStatus.WAITING
            runnable.append(item)
        return runnable, None if next_due == float("inf") else max(next_due - now, 0.001)

    def _cut(self, first: Item, window: list[Item]) -> list[Item]:
        by_prepared = {i.prepared: i for i in window}
        for batch in plan_batches(
            [i.prepared for i in window], self.max_batch_size, self.max_batch_tokens
        ):
            if first.prepared in batch:
                return [by_prepared[p] for p in batch]
        raise AssertionError("the first item is always in one batch")  # pragma: no cover

    def _take(self, batch: list[Item]) -> list[Item]:
        for item in batch:
            del self._pool[item.seq]
            item.status = ItemStatus.RUNNING
        self.order.taken(batch)
        return batch

    def complete(self, items: list[Item]) -> None:
        """Count ``items`` as ended; acknowledge messages whose last item this was."""
        finished = []
        with self._cond:
            for item in items:
                if item.status is ItemStatus.FINISHED:
                    continue  # counted already: a message is acked only once all its items end
                item.status = ItemStatus.FINISHED
                delivery = item.delivery
                delivery.remaining -= 1
                if delivery.remaining == 0 and not delivery.done:
                    finished.append(delivery)
                    self._held.pop(delivery.tag, None)
        for delivery in finished:
            self._finish(delivery)

    def retry_later(self, items: list[Item]) -> None:
        """Put items back, keeping their place; each runs again from its ``not_before``."""
        now = time.monotonic()
        with self._cond:
            for item in items:
                if item.delivery.done:  # a released message's items are not retried
                    item.status = ItemStatus.RELEASED
                    continue
                waits = item.not_before > now
                item.status = ItemStatus.DEFERRED if waits else ItemStatus.WAITING
                self._pool[item.seq] = item
            self._cond.notify_all()

    def release(self, tags: Collection[str] | None = None) -> tuple[list[str], int]:
        """Release the messages with ``tags`` (all when None): never ack them, drop their
        waiting items (the broker redelivers the messages). Returns the tags released and
        the number of items dropped."""
        with self._cond:
            return self._release(list(self._held) if tags is None else tags)

    def release_lost(self, tags: Collection[str]) -> tuple[list[str], int]:
        """:meth:`release` the messages whose leases were found gone (by ``tags``), except
        those whose results took their leases with them (settling) meanwhile."""
        with self._cond:
            lost = [t for t in tags if t in self._held and not self._held[t].settling]
            return self._release(lost)

    def _release(self, tags: Collection[str]) -> tuple[list[str], int]:
        released = [t for t in tags if t in self._held]
        for tag in released:
            self._held.pop(tag).done = True  # done without an ack
        dropped = [i for i in self._pool.values() if i.delivery.done]
        self._drop(dropped)
        return released, len(dropped)

    def drop_waiting(self) -> int:
        """Drop every waiting item but keep holding (and leasing) the messages: at a warm
        shutdown the rows in flight finish while the broker keeps the messages for redelivery.
        Returns the items dropped."""
        with self._cond:
            dropped = list(self._pool.values())
            self._drop(dropped)
            return len(dropped)

    def _drop(self, items: list[Item]) -> None:
        for item in items:
            del self._pool[item.seq]
            item.status = ItemStatus.RELEASED

    def close(self) -> None:
        """Wake the engine loop and make it stop: ``next_batch`` and ``take`` return None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _finish(self, delivery: Delivery) -> None:
        if not delivery.done:
            delivery.done = True
            delivery.ack()
