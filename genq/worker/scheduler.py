"""The worker's pool of buffered prompts, from which the engine loop draws its batches.

Messages (chunks of prompts, from any number of jobs) are admitted by the consumer thread as
they arrive; the engine thread takes one batch at a time, so batches are cut across messages
and jobs and a small job's prompts join the next batch instead of waiting for a big job's
message to be finished. A message is acknowledged when the last of its prompts has a result.

Fairness: the batch is always built around the oldest waiting prompt (first come, first
served), from prompts that can share its forward pass, sorted so that little is padded.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from genq.worker.batching import batch_key, plan_batches
from genq.worker.engines.base import Prepared

WINDOW_FACTOR = 4  # batches are cut from the oldest WINDOW_FACTOR x max_batch_size candidates


@dataclass(eq=False)
class Delivery:
    """One queue message: acknowledged once every one of its items has ended."""

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


class Scheduler:
    """Thread-safe pool of prompts; ``next_batch`` blocks until a batch is worth running."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int, max_wait_ms: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: dict[int, Entry] = {}  # seq -> entry; dicts keep arrival order
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._held = 0  # deliveries admitted and not yet finished

    def add(self, delivery: Delivery, items: list[Prepared]) -> None:
        """Admit a message's runnable items; ack it now if it has none left to run."""
        if delivery.remaining == 0:
            self._finish(delivery)
            return
        now = time.monotonic()
        with self._cond:
            self._held += 1
            for prepared in items:
                seq = next(self._seq)
                key = batch_key(prepared.params)
                self._pending[seq] = Entry(seq, now, prepared, delivery, key)
            self._cond.notify_all()

    def pending(self) -> int:
        """Prompts waiting for a batch."""
        with self._cond:
            return len(self._pending)

    def held(self) -> int:
        """Messages admitted whose prompts have not all ended."""
        with self._cond:
            return self._held

    def next_batch(self) -> list[Entry] | None:
        """The next batch to run, or None once the scheduler is closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._pending:
                    self._cond.wait()
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
                if not self._pending:
                    if not wait:
                        return []
                    self._cond.wait()
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
                if entry.delivery.remaining == 0:
                    finished.append(entry.delivery)
                    self._held = max(self._held - 1, 0)
        for delivery in finished:
            self._finish(delivery)

    def retry_later(self, entries: list[Entry]) -> None:
        """Put a batch back (e.g. its results could not be written), keeping its place."""
        with self._cond:
            for entry in entries:
                self._pending[entry.seq] = entry
            self._pending = dict(sorted(self._pending.items()))
            self._cond.notify_all()

    def drop_pending(self) -> int:
        """Forget waiting items (their messages are redelivered by the broker); return count."""
        with self._cond:
            dropped = len(self._pending)
            self._pending.clear()
            self._held = 0
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _finish(self, delivery: Delivery) -> None:
        if not delivery.done:
            delivery.done = True
            delivery.ack()
