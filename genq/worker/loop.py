"""The engine thread: draws prompts from the scheduler and runs them through the engine.

Two modes. *Continuous* (engines with a decoder, e.g. ``hf``): rows join a running decode batch
whenever rows are free and leave as soon as they finish. *Static* (``ct2``, ``null``): one batch
at a time, cut by the batching policy around the first waiting prompt by the ordering policy.

Every prompt travels as one :class:`~genq.worker.item.Item` (pool, loop and runner share it);
the engine only ever sees its :class:`Prepared`.

All model work happens on this one thread, the warm-up included: a second thread that also
ran torch ops (the main thread, say) keeps its own OpenMP team, and the two teams' spinning
threads cost ~15% of CPU generation speed on a small machine.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from redis.exceptions import RedisError

from genq.schema import TERMINAL
from genq.settings import Settings
from genq.worker.engines.base import Decoder, Generation, Prepared, is_out_of_memory
from genq.worker.item import Item
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Scheduler

log = logging.getLogger("genq.worker")

RETRY_DELAY_S = 1.0  # after a batch's results could not be written (Redis away)
RETRY_LOG_S = 10.0  # while Redis is away, say so at most this often
CANCEL_CHECK_S = 1.0  # how often running rows are checked against cancelled jobs
SHUTDOWN_GRACE_S = 60.0  # a warm shutdown lets the rows in flight finish for this long


@dataclass
class HeldResults:
    """Items a continuous batch step finished, with their generations, until written."""

    done: list[tuple[Item, Generation]]
    rows: int  # rows in the batch when they finished

    @property
    def items(self) -> list[Item]:
        return [item for item, _ in self.done]


class EngineLoop(threading.Thread):
    """Warms the engine up, then serves the scheduler until it is closed."""

    def __init__(self, scheduler: Scheduler, runner: BatchRunner, settings: Settings) -> None:
        super().__init__(name="genq-engine", daemon=True)
        self.scheduler = scheduler
        self.runner = runner
        self.settings = settings
        self.on_room: Callable[[], None] = lambda: None  # the pool has room for more messages
        self.warmed = threading.Event()
        self.failure: BaseException | None = None
        # Finished generations whose results could not be written yet (Redis away): kept and
        # written when Redis is back, rather than generated again. Their messages stay unacked.
        self._unwritten: list[HeldResults] = []
        self._next_write_s = 0.0
        self._last_retry_log_s = -RETRY_LOG_S
        # An item on its second try or later, waiting to run alone once nothing else is in
        # flight (counted only then: a poison item must not take neighbours down with it).
        self._suspect: Item | None = None

    def run(self) -> None:
        try:
            self.runner.engine.warmup()
        except BaseException as e:
            self.failure = e
            return
        finally:
            self.warmed.set()
        decoder = self.runner.engine.decoder() if self.settings.batching == "continuous" else None
        try:
            if decoder is not None:
                self._run_continuous(decoder)
            else:
                self._run_static()
        except BaseException as e:
            # Never leave a worker that consumes but cannot generate: stop it (warm shutdown
            # hands its messages back) and let `genq worker` exit non-zero.
            log.critical("engine loop crashed; stopping the worker", exc_info=True)
            self.failure = e
            os.kill(os.getpid(), signal.SIGTERM)

    # --- static ---------------------------------------------------------------------------
    def _run_static(self) -> None:
        while (batch := self.scheduler.next_batch()) is not None:
            self.on_room()
            normal = self._begin(batch)
            if normal:
                self._rerun(normal, checked=True)
            self._run_suspect()  # after the batch: nothing else is in flight

    # --- continuous -----------------------------------------------------------------------
    def _run_continuous(self, decoder: Decoder) -> None:
        running: dict[Prepared, Item] = {}  # every item in the decode batch
        last_check = time.monotonic()
        size = self.settings.max_batch_size
        closing_by: float | None = None  # set at shutdown: finish the rows in flight by then

        def fits(items: list[Prepared]) -> bool:
            return decoder.projected_tokens(items) <= self.runner.budget

        while True:
            if self._suspect is not None and not decoder.active_rows:
                if closing_by is None:
                    self._run_suspect()
                else:  # shutting down: its message is redelivered
                    self._suspect = None
            free = size - decoder.active_rows
            # While a suspect waits, nothing joins: the batch drains, then it runs alone.
            if free > 0 and closing_by is None and self._suspect is None:
                idle = decoder.active_rows == 0 and not self._unwritten
                taken = self.scheduler.take(free, fits, wait=idle)
                if taken is None:
                    closing_by = time.monotonic() + SHUTDOWN_GRACE_S
                    taken = []
                normal = self._begin(taken) if taken else []
                if normal:
                    self.on_room()
                    started = time.time()
                    for item in normal:
                        item.started_at = started
                        running[item.prepared] = item
                    joining = [item.prepared for item in normal]
                    self._guarded(decoder, running, partial(decoder.add, joining))
            if self._unwritten:
                self._write_held()
            if not decoder.active_rows:
                if closing_by is not None and (
                    not self._unwritten or time.monotonic() > closing_by
                ):
                    return
                if self._unwritten:
                    time.sleep(min(RETRY_DELAY_S, 0.1))  # idle, waiting only for Redis
                continue
            if closing_by is not None and time.monotonic() > closing_by:
                # Out of time: the broker redelivers these messages; no result was written.
                log.warning("shutdown: %d unfinished item(s) handed back", len(decoder.clear()))
                return
            self._guarded(decoder, running, decoder.step)
            if time.monotonic() - last_check > CANCEL_CHECK_S:
                last_check = time.monotonic()
                self._drop_cancelled(decoder, running)

    def _guarded(
        self,
        decoder: Decoder,
        running: dict[Prepared, Item],
        call: Callable[[], list[tuple[Prepared, Generation]]],
    ) -> None:
        try:
            done = call()
        except Exception as e:
            # The batch is lost (with any item that was being added): every unfinished item
            # reruns as static batches, which split to isolate a failing item and record its
            # error.
            if is_out_of_memory(e):
                self.runner.out_of_memory(self.runner.budget)
            log.warning(
                "continuous batch failed (%s: %s); rerunning its items as static batches",
                type(e).__name__,
                e,
            )
            decoder.clear()
            failed = list(running.values())
            running.clear()
            self._rerun(failed)
            return
        self.runner.batch_done()
        self.runner.metrics.kv(decoder.projected_tokens(), self.runner.budget)
        if not done:
            return
        finished = [(running.pop(p), generation) for p, generation in done]
        self._unwritten.append(HeldResults(finished, decoder.active_rows + len(done)))
        self._write_held(force=True)

    def _write_held(self, force: bool = False) -> None:
        """Write the results held back while Redis was away (at most every RETRY_DELAY_S)."""
        if not force and time.monotonic() < self._next_write_s:
            return
        while self._unwritten:
            held = self._unwritten[0]
            try:
                self.runner.finish(held.done, held.rows)
            except RedisError as e:
                self._next_write_s = time.monotonic() + RETRY_DELAY_S
                count = sum(len(h.done) for h in self._unwritten)
                self._say_retrying(f"holding {count} finished item(s) until Redis is back ({e})")
                return
            except Exception:
                self._unwritten.pop(0)
                self._retry(held.items)
                continue
            self._unwritten.pop(0)
            self.scheduler.complete(held.items)

    def _rerun(self, items: list[Item], checked: bool = False) -> None:
        """Run ``items`` as static batches; failed items go back to wait out their backoff
        (``checked``: their jobs' statuses were just read, by :meth:`_begin`)."""
        try:
            retry = self.runner.run(items, checked=checked)
        except Exception:
            self._retry(items)
            return
        again = set(retry)
        self.scheduler.retry_later(retry)
        self.scheduler.complete([item for item in items if item not in again])

    def _begin(self, taken: list[Item]) -> list[Item]:
        """Count an attempt (in Redis, so that a worker's death counts too) for each item
        taken from the pool that was never started, and return those, to batch now.

        The others were started before: they failed, or were in flight when a worker died.
        One started GENQ_MAX_ATTEMPTS times ends as ``worker_lost`` (a poison item must not
        take down every worker in turn); one more becomes the *suspect*, run alone once
        nothing else is in flight; the rest go back to the pool, uncounted. Items of ended
        jobs end here too.
        """
        by_job: dict[str, list[int]] = defaultdict(list)
        for item in taken:
            by_job[item.job_id].append(item.index)
        try:
            statuses, counts = self.runner.store.start(by_job)
            live = set(self.runner.live(taken, statuses))
        except RedisError as e:  # cannot tell: run them; results are checked when written
            self._say_retrying(f"could not count attempts ({e})")
            for item in taken:
                item.attempts = max(item.attempts, 1)  # this try, which Redis could not count
            return taken
        normal: list[Item] = []
        waiting: list[Item] = []
        ended: list[Item] = []
        for item in taken:
            count = counts.get((item.job_id, item.index), 1)
            if item not in live:
                ended.append(item)
            elif count > 0:
                item.attempts = count
                normal.append(item)
            elif -count >= self.settings.max_attempts:
                try:
                    self.runner.record_abandoned(item, -count)
                    ended.append(item)
                except RedisError:
                    waiting.append(item)  # decided again on its next turn
            elif self._suspect is None:
                self._suspect = item
            else:
                waiting.append(item)
        if ended:
            self.scheduler.complete(ended)
        if waiting:
            self.scheduler.retry_later(waiting)  # not_before passed: next in line
        return normal

    def _run_suspect(self) -> None:
        """Count another attempt for the suspect and run it alone (nothing else in flight)."""
        item, self._suspect = self._suspect, None
        if item is None:
            return
        try:
            statuses, counts = self.runner.store.start({item.job_id: [item.index]}, retry=True)
            if not self.runner.live([item], statuses):  # its job ended meanwhile
                self.scheduler.complete([item])
                return
        except RedisError as e:
            self._say_retrying(f"could not count attempts ({e})")
            self.scheduler.retry_later([item])
            return
        item.attempts = abs(counts[(item.job_id, item.index)])
        self._rerun([item], checked=True)

    def _drop_cancelled(self, decoder: Decoder, running: dict[Prepared, Item]) -> None:
        jobs = {item.job_id for item in running.values()}
        try:
            statuses = self.runner.store.statuses(jobs)
        except RedisError as e:
            self._say_retrying(f"could not read job statuses ({e})")
            return
        ended = {job for job, status in statuses.items() if status in TERMINAL | {None}}
        if ended:
            dropped = decoder.drop(ended)
            log.info("stopped %d item(s) of ended job(s) %s", len(dropped), sorted(ended))
            gone = [running.pop(p) for p in dropped]
            try:
                self.runner.live(gone, statuses)  # expired items get their result
            except RedisError:
                self._retry(gone)  # back to the pool: the next look at them ends them
                return
            self.scheduler.complete(gone)

    def _say_retrying(self, what: str, exc_info: bool = False) -> None:
        if time.monotonic() - self._last_retry_log_s >= RETRY_LOG_S:
            self._last_retry_log_s = time.monotonic()
            log.warning("%s; retrying every %.0f s", what, RETRY_DELAY_S, exc_info=exc_info)

    def _retry(self, items: list[Item]) -> None:
        error = sys.exc_info()[1]
        self._say_retrying(
            f"could not run or record {len(items)} item(s) ({type(error).__name__}: {error})",
            exc_info=not isinstance(error, RedisError),
        )
        for item in items:
            item.not_before = time.monotonic() + RETRY_DELAY_S
        self.scheduler.retry_later(items)
