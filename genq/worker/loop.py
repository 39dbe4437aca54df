"""The engine thread: draws prompts from the scheduler and runs them through the engine.

Two modes. *Continuous* (engines with a decoder, e.g. ``hf``): rows join a running decode batch
whenever rows are free and leave as soon as they finish. *Static* (``ct2``, ``null``): one batch
at a time, cut by the batching policy around the oldest waiting prompt.

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
from functools import partial
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from genq.schema import TERMINAL
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared, is_out_of_memory
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Entry, Scheduler

if TYPE_CHECKING:
    from genq.worker.engines.hf_continuous import ContinuousDecoder

log = logging.getLogger("genq.worker")

RETRY_DELAY_S = 1.0  # after a batch's results could not be written (Redis away)
RETRY_LOG_S = 10.0  # while Redis is away, say so at most this often
CANCEL_CHECK_S = 1.0  # how often running rows are checked against cancelled jobs
SHUTDOWN_GRACE_S = 60.0  # a warm shutdown lets the rows in flight finish for this long


# Results of a continuous batch step, held until they are written: (entries, generations,
# start times by id of item, rows in the batch).
_Held = tuple[list[Entry], list[tuple[Prepared, Generation]], dict[int, float], int]


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
        self._unwritten: list[_Held] = []
        self._next_write_s = 0.0
        self._last_retry_log_s = -RETRY_LOG_S
        # An item on its second try or later, waiting to run alone once nothing else is in
        # flight (counted only then: a poison item must not take neighbours down with it).
        self._suspect: Entry | None = None

    def run(self) -> None:
        try:
            self.runner.engine.warmup()
        except BaseException as e:
            self.failure = e
            return
        finally:
            self.warmed.set()
        make_decoder = getattr(self.runner.engine, "decoder", None)
        try:
            if self.settings.batching == "continuous" and make_decoder is not None:
                self._run_continuous(make_decoder())
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
    def _run_continuous(self, decoder: ContinuousDecoder) -> None:
        entries: dict[int, Entry] = {}  # id(prepared) -> entry, for every item in the batch
        started: dict[int, float] = {}
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
                    for entry in normal:
                        entries[id(entry.prepared)] = entry
                        started[id(entry.prepared)] = time.time()
                    items = [e.prepared for e in normal]
                    self._guarded(decoder, entries, started, partial(decoder.add, items))
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
            self._guarded(decoder, entries, started, decoder.step)
            if time.monotonic() - last_check > CANCEL_CHECK_S:
                last_check = time.monotonic()
                self._drop_cancelled(decoder, entries, started)

    def _guarded(
        self,
        decoder: ContinuousDecoder,
        entries: dict[int, Entry],
        started: dict[int, float],
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
            failed = list(entries.values())
            entries.clear()
            started.clear()
            self._rerun(failed)
            return
        self.runner.batch_done()
        if not done:
            return
        finished = [entries.pop(id(p)) for p, _ in done]
        times = {id(p): started.pop(id(p)) for p, _ in done}
        self._unwritten.append((finished, done, times, decoder.active_rows + len(done)))
        self._write_held(force=True)

    def _write_held(self, force: bool = False) -> None:
        """Write the results held back while Redis was away (at most every RETRY_DELAY_S)."""
        if not force and time.monotonic() < self._next_write_s:
            return
        while self._unwritten:
            finished, done, times, rows = self._unwritten[0]
            try:
                self.runner.finish(done, times, rows)
            except RedisError as e:
                self._next_write_s = time.monotonic() + RETRY_DELAY_S
                held = sum(len(f) for f, *_ in self._unwritten)
                self._say_retrying(f"holding {held} finished item(s) until Redis is back ({e})")
                return
            except Exception:
                self._unwritten.pop(0)
                self._retry(finished)
                continue
            self._unwritten.pop(0)
            self.scheduler.complete(finished)

    def _rerun(self, entries: list[Entry], checked: bool = False) -> None:
        """Run ``entries`` as static batches; failed items go back to wait out their backoff
        (``checked``: their jobs' statuses were just read, by :meth:`_begin`)."""
        try:
            retry = self.runner.run([e.prepared for e in entries], checked=checked)
        except Exception:
            self._retry(entries)
            return
        again = {id(p) for p in retry}
        later = [e for e in entries if id(e.prepared) in again]
        for entry in later:
            entry.not_before = time.monotonic() + self.runner.retry_delay_s(entry.prepared)
        self.scheduler.retry_later(later)
        self.scheduler.complete([e for e in entries if id(e.prepared) not in again])

    def _begin(self, taken: list[Entry]) -> list[Entry]:
        """Count an attempt (in Redis, so that a worker's death counts too) for each entry
        taken from the pool that was never started, and return those, to batch now.

        The others were started before: they failed, or were in flight when a worker died.
        One started GENQ_MAX_ATTEMPTS times ends as ``worker_lost`` (a poison item must not
        take down every worker in turn); one more becomes the *suspect*, run alone once
        nothing else is in flight; the rest go back to the pool, uncounted. Entries of ended
        jobs end here too.
        """
        by_job: dict[str, list[int]] = defaultdict(list)
        for entry in taken:
            by_job[entry.prepared.job_id].append(entry.prepared.item.index)
        try:
            statuses, counts = self.runner.store.start(by_job)
            live = {id(p) for p in self.runner.live([e.prepared for e in taken], statuses)}
        except RedisError as e:  # cannot tell: run them; results are checked when written
            self._say_retrying(f"could not count attempts ({e})")
            return taken
        normal: list[Entry] = []
        waiting: list[Entry] = []
        ended: list[Entry] = []
        for entry in taken:
            p = entry.prepared
            count = counts.get((p.job_id, p.item.index), 1)
            if id(p) not in live:
                ended.append(entry)
            elif count > 0:
                normal.append(entry)
            elif -count >= self.settings.max_attempts:
                try:
                    self.runner.record_abandoned(p, -count)
                    ended.append(entry)
                except RedisError:
                    waiting.append(entry)  # decided again on its next turn
            elif self._suspect is None:
                self._suspect = entry
            else:
                waiting.append(entry)
        if ended:
            self.scheduler.complete(ended)
        if waiting:
            self.scheduler.retry_later(waiting)  # not_before passed: next in line
        return normal

    def _run_suspect(self) -> None:
        """Count another attempt for the suspect and run it alone (nothing else in flight)."""
        entry, self._suspect = self._suspect, None
        if entry is None:
            return
        p = entry.prepared
        key = (p.job_id, p.item.index)
        try:
            statuses, counts = self.runner.store.start({p.job_id: [p.item.index]}, retry=True)
            if not self.runner.live([p], statuses):  # its job ended meanwhile
                self.scheduler.complete([entry])
                return
        except RedisError as e:
            self._say_retrying(f"could not count attempts ({e})")
            self.scheduler.retry_later([entry])
            return
        self.runner.attempts[key] = abs(counts[key])
        self._rerun([entry], checked=True)

    def _drop_cancelled(
        self, decoder: ContinuousDecoder, entries: dict[int, Entry], started: dict[int, float]
    ) -> None:
        jobs = {e.prepared.job_id for e in entries.values()}
        try:
            statuses = self.runner.store.statuses(jobs)
        except RedisError as e:
            self._say_retrying(f"could not read job statuses ({e})")
            return
        ended = {job for job, status in statuses.items() if status in TERMINAL | {None}}
        if ended:
            dropped = decoder.drop(ended)
            log.info("stopped %d item(s) of ended job(s) %s", len(dropped), sorted(ended))
            for p in dropped:
                started.pop(id(p), None)
            gone = [entries.pop(id(p)) for p in dropped]
            try:
                self.runner.live(dropped, statuses)  # expired items get their result
            except RedisError:
                self._retry(gone)  # back to the pool: the next look at them ends them
                return
            self.scheduler.complete(gone)

    def _say_retrying(self, what: str, exc_info: bool = False) -> None:
        if time.monotonic() - self._last_retry_log_s >= RETRY_LOG_S:
            self._last_retry_log_s = time.monotonic()
            log.warning("%s; retrying every %.0f s", what, RETRY_DELAY_S, exc_info=exc_info)

    def _retry(self, entries: list[Entry]) -> None:
        error = sys.exc_info()[1]
        self._say_retrying(
            f"could not run or record {len(entries)} item(s) ({type(error).__name__}: {error})",
            exc_info=not isinstance(error, RedisError),
        )
        for entry in entries:
            entry.not_before = time.monotonic() + RETRY_DELAY_S
        self.scheduler.retry_later(entries)
