"""The worker's pool of buffered prompts, from which the engine loop draws its batches.

Messages (chunks of prompts, from any number of jobs) are admitted by the consumer thread as
they arrive; the engine thread takes one batch at a time, so batches are cut across messages
and jobs and a small job's prompts join the next batch instead of waiting for a big job's
message to be finished. A message is acknowledged when the last of its prompts has a result.

Fairness: the batch is always built around the oldest waiting prompt (first come, first
served), from prompts that can share its forward pass, sorted so that little is padded.

A message the worker can no longer acknowledge (its lease was lost, or the broker connection
it came on was closed) is *released*: its waiting prompts leave the pool, and the ones already
in a batch still finish and write their results, but it is never acknowledged: the broker
hands it to a worker again, which skips the items that have results.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from genq.worker.batching import batch_key, plan_batches
from genq.worker.engines.base import Prepared

WINDOW_FACTOR = 4  # batches are cut from the oldest WINDOW_FACTOR x max_batch_size candidates


@dataclass(eq=False)
class Delivery:
    """One queue message: acknowledged once every one of its items has ended."""

    tag: str  # the broker's delivery tag, which its lease is renewed under
    job_id: str
    remaining: int
    ack: Callable[[], None]
    done: bool = False


@dataclass(eq=False)
class Entry:
    """One prompt waiting in the pool."""

    seq: int
    arrived: float
    prepared: Prepared
    delivery: Delivery
    key: object = field(default=None)
    not_before: float = 0.0  # monotonic time before which a retried item does not run


class Scheduler:
    """Thread-safe pool of prompts; ``next_batch`` blocks until a batch is worth running."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int, max_wait_ms: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: dict[int, Entry] = {}  # seq -> entry; dicts keep arrival order
        self._deferred: dict[int, Entry] = {}  # retries waiting out their backoff
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._held: dict[str, Delivery] = {}  # tag -> delivery admitted, not finished

    def add(self, delivery: Delivery, items: list[Prepared]) -> None:
        """Admit a message's runnable items; ack it now if it has none left to run."""
        if delivery.remaining == 0:
            self._finish(delivery)
            return
        now = time.monotonic()
        with self._cond:
            if delivery.tag in self._held:
                # kombu reuses a message's delivery tag on redelivery: the same message came
                # back while its earlier delivery is still here. Only the new one may be acked.
                self._release([delivery.tag])
            self._held[delivery.tag] = delivery
            for prepared in items:
                seq = next(self._seq)
                key = batch_key(prepared.params)
                self._pending[seq] = Entry(seq, now, prepared, delivery, key)
            self._cond.notify_all()

    def pending(self) -> int:
        """Prompts waiting for a batch (retries waiting out their backoff included)."""
        with self._cond:
            return len(self._pending) + len(self._deferred)

    def _promote(self) -> float | None:
        """Move retries whose backoff is over into the pool; seconds until the next one is."""
        if not self._deferred:
            return None
        now = time.monotonic()
        due = [e for e in self._deferred.values() if e.not_before <= now]
        for entry in due:
            del self._deferred[entry.seq]
            self._pending[entry.seq] = entry
        if due:
            self._pending = dict(sorted(self._pending.items()))  # retries keep their place
        if not self._deferred:
            return None
        return max(min(e.not_before for e in self._deferred.values()) - now, 0.001)

    def held(self) -> int:
        """Messages admitted whose prompts have not all ended."""
        with self._cond:
            return len(self._held)

    def held_tags(self) -> list[str]:
        """Delivery tags of the messages held, whose leases the heartbeat renews."""
        with self._cond:
            return list(self._held)

    def next_batch(self) -> list[Entry] | None:
        """The next batch to run, or None once the scheduler is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                next_retry_s = self._promote()
                if not self._pending:
                    self._cond.wait(next_retry_s)
                    continue
                oldest = next(iter(self._pending.values()))
                group = [e for e in self._pending.values() if e.key == oldest.key]
                rows = sum(e.prepared.rows for e in group)
                wait_s = oldest.arrived + self.max_wait_s - time.monotonic()
                if rows < self.max_batch_size and wait_s > 0:
                    # A lone prompt waits at most max_wait_ms for neighbours.
                    self._cond.wait(wait_s)
                    continue
                batch = self._cut(oldest, group)
                for entry in batch:
                    del self._pending[entry.seq]
                return batch

    def take(
        self, max_rows: int, fits: Callable[[list[Prepared]], bool], wait: bool
    ) -> list[Entry] | None:
        """Oldest waiting prompts within ``max_rows`` that ``fits`` accepts; None once closed.

        For a continuous batch: with ``wait`` (the engine is idle) block for the first prompt
        and give it max_wait_ms to gather neighbours; without, return at once.
        """
        with self._cond:
            while True:
                if self._closed:
                    return None
                next_retry_s = self._promote()
                if not self._pending:
                    if not wait:
                        return []
                    self._cond.wait(next_retry_s)
                    continue
                oldest = next(iter(self._pending.values()))
                rows = sum(e.prepared.rows for e in self._pending.values())
                wait_s = oldest.arrived + self.max_wait_s - time.monotonic()
                if wait and rows < max_rows and wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                chosen: list[Entry] = []
                used_rows = 0
                for entry in self._pending.values():
                    p = entry.prepared
                    ok = used_rows + p.rows <= max_rows and fits([e.prepared for e in chosen] + [p])
                    if not ok and (chosen or not wait):
                        break  # an item too big for any batch still runs, alone, when idle
                    chosen.append(entry)
                    used_rows += p.rows
                for entry in chosen:
                    del self._pending[entry.seq]
                return chosen

    def _cut(self, oldest: Entry, group: list[Entry]) -> list[Entry]:
        window = group[: self.max_batch_size * WINDOW_FACTOR]
        by_item = {id(e.prepared): e for e in window}
        for batch in plan_batches(
            [e.prepared for e in window], self.max_batch_size, self.max_batch_tokens
        ):
            if any(p is oldest.prepared for p in batch):
                return [by_item[id(p)] for p in batch]
        raise AssertionError("the oldest entry is always in one batch")  # pragma: no cover

    def complete(self, entries: list[Entry]) -> None:
        """Count ``entries`` as ended; acknowledge messages whose last item this was."""
        finished = []
        with self._cond:
            for entry in entries:
                entry.delivery.remaining -= 1
                if entry.delivery.remaining == 0 and not entry.delivery.done:
                    finished.append(entry.delivery)
                    self._held.pop(entry.delivery.tag, None)
        for delivery in finished:
            self._finish(delivery)

    def retry_later(self, entries: list[Entry]) -> None:
        """Put entries back, keeping their place; each runs again from its ``not_before``."""
        with self._cond:
            for entry in entries:
                if not entry.delivery.done:  # a released message's items are not retried
                    self._deferred[entry.seq] = entry
            self._promote()
            self._cond.notify_all()

    def release(self, tags: Collection[str] | None = None) -> tuple[list[str], int]:
        """Release the messages with ``tags`` (all when None): never ack them, drop their
        waiting items (the broker redelivers the messages). Returns the tags released and
        the number of items dropped."""
        with self._cond:
            return self._release(list(self._held) if tags is None else tags)

    def _release(self, tags: Collection[str]) -> tuple[list[str], int]:
        released = [t for t in tags if t in self._held]
        for tag in released:
            self._held.pop(tag).done = True  # done without an ack
        before = len(self._pending) + len(self._deferred)
        self._pending = {s: e for s, e in self._pending.items() if not e.delivery.done}
        self._deferred = {s: e for s, e in self._deferred.items() if not e.delivery.done}
        return released, before - len(self._pending) - len(self._deferred)

    def drop_waiting(self) -> int:
        """Drop every waiting item but keep holding (and leasing) the messages: at a warm
        shutdown the rows in flight finish while the broker keeps the messages for redelivery.
        Returns the items dropped."""
        with self._cond:
            dropped = len(self._pending) + len(self._deferred)
            self._pending.clear()
            self._deferred.clear()
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _finish(self, delivery: Delivery) -> None:
        if not delivery.done:
            delivery.done = True
            delivery.ack()
