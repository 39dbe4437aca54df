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
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from genq.schema import TERMINAL
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Entry, Scheduler

if TYPE_CHECKING:
    from genq.worker.engines.hf_continuous import ContinuousDecoder

log = logging.getLogger("genq.worker")

RETRY_DELAY_S = 1.0  # after a batch's results could not be written (Redis away)
CANCEL_CHECK_S = 1.0  # how often running rows are checked against cancelled jobs
SHUTDOWN_GRACE_S = 60.0  # a warm shutdown lets the rows in flight finish for this long


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
        self.max_batch_tokens = settings.resolved_max_batch_tokens(runner.engine.device)

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
            try:
                self.runner.run([entry.prepared for entry in batch])
            except Exception:
                self._retry(batch)
                continue
            self.scheduler.complete(batch)

    # --- continuous -----------------------------------------------------------------------
    def _run_continuous(self, decoder: ContinuousDecoder) -> None:
        entries: dict[int, Entry] = {}  # id(prepared) -> entry, for every item in the batch
        started: dict[int, float] = {}
        last_check = time.monotonic()
        size = self.settings.max_batch_size
        budget = self.max_batch_tokens
        closing_by: float | None = None  # set at shutdown: finish the rows in flight by then

        def fits(items: list[Prepared]) -> bool:
            return decoder.projected_tokens(items) <= budget

        while True:
            free = size - decoder.active_rows
            if free > 0 and closing_by is None:
                taken = self.scheduler.take(free, fits, wait=decoder.active_rows == 0)
                if taken is None:
                    closing_by = time.monotonic() + SHUTDOWN_GRACE_S
                elif taken := self._live(taken):
                    self.on_room()
                    for entry in taken:
                        entries[id(entry.prepared)] = entry
                        started[id(entry.prepared)] = time.time()
                    items = [e.prepared for e in taken]
                    self._guarded(decoder, entries, started, partial(decoder.add, items))
            if not decoder.active_rows:
                if closing_by is not None:
                    return
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
        except Exception:
            # The batch is lost (with any item that was being added): every unfinished item
            # reruns as static batches, which split to isolate a failing item and record its
            # error.
            log.exception("continuous batch failed; rerunning its items as static batches")
            decoder.clear()
            failed = list(entries.values())
            entries.clear()
            started.clear()
            self._rerun(failed)
            return
        if not done:
            return
        finished = [entries.pop(id(p)) for p, _ in done]
        times = {id(p): started.pop(id(p)) for p, _ in done}
        try:
            self.runner.finish(done, times, decoder.active_rows + len(done))
        except Exception:
            self._retry(finished)
            return
        self.scheduler.complete(finished)

    def _rerun(self, entries: list[Entry]) -> None:
        try:
            self.runner.run([e.prepared for e in entries])
        except Exception:
            self._retry(entries)
            return
        self.scheduler.complete(entries)

    def _live(self, taken: list[Entry]) -> list[Entry]:
        """Entries whose job still runs; the others end now, without a result."""
        try:
            statuses = self.runner.store.statuses({e.prepared.job_id for e in taken})
        except RedisError as e:  # cannot tell: run them; results are checked when written
            log.warning("could not read job statuses: %s", e)
            return taken
        ended = [e for e in taken if statuses[e.prepared.job_id] in TERMINAL | {None}]
        if ended:
            self.scheduler.complete(ended)
        return [e for e in taken if statuses[e.prepared.job_id] not in TERMINAL | {None}]

    def _drop_cancelled(
        self, decoder: ContinuousDecoder, entries: dict[int, Entry], started: dict[int, float]
    ) -> None:
        jobs = {e.prepared.job_id for e in entries.values()}
        try:
            statuses = self.runner.store.statuses(jobs)
        except RedisError as e:
            log.warning("could not read job statuses: %s", e)
            return
        ended = {job for job, status in statuses.items() if status in TERMINAL | {None}}
        if ended:
            dropped = decoder.drop(ended)
            log.info("stopped %d item(s) of ended job(s) %s", len(dropped), sorted(ended))
            for p in dropped:
                started.pop(id(p), None)
            self.scheduler.complete([entries.pop(id(p)) for p in dropped])

    def _retry(self, entries: list[Entry]) -> None:
        log.exception("could not run or record %d item(s); retrying", len(entries))
        self.scheduler.retry_later(entries)
        time.sleep(RETRY_DELAY_S)
