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
import threading
import time
from collections.abc import Callable
from functools import partial

from genq.schema import TERMINAL
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Entry, Scheduler

log = logging.getLogger("genq.worker")

RETRY_DELAY_S = 1.0  # after a batch's results could not be written (Redis away)
CANCEL_CHECK_S = 1.0  # how often running rows are checked against cancelled jobs


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
        if self.settings.batching == "continuous" and make_decoder is not None:
            self._run_continuous(make_decoder())
        else:
            self._run_static()

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
    def _run_continuous(self, decoder: object) -> None:
        from genq.worker.engines.hf_continuous import ContinuousDecoder

        assert isinstance(decoder, ContinuousDecoder)
        entries: dict[int, Entry] = {}  # id(prepared) -> entry, for every row in the batch
        started: dict[int, float] = {}
        last_check = time.monotonic()
        size = self.settings.max_batch_size
        budget = self.max_batch_tokens

        def fits(items: list[Prepared]) -> bool:
            return decoder.projected_tokens(items) <= budget

        while True:
            free = size - decoder.active_rows
            if free > 0:
                taken = self.scheduler.take(free, fits, wait=decoder.active_rows == 0)
                if taken is None:
                    return
                taken = self._live(taken)
                if taken:
                    self.on_room()
                    for entry in taken:
                        entries[id(entry.prepared)] = entry
                        started[id(entry.prepared)] = time.time()
                    items = [e.prepared for e in taken]
                    self._guarded(decoder, entries, started, partial(decoder.add, items))
            if not decoder.active_rows:
                continue
            self._guarded(decoder, entries, started, decoder.step)
            if time.monotonic() - last_check > CANCEL_CHECK_S:
                last_check = time.monotonic()
                self._drop_cancelled(decoder, entries, started)

    def _guarded(
        self,
        decoder: object,
        entries: dict[int, Entry],
        started: dict[int, float],
        call: Callable[[], list[tuple[Prepared, Generation]]],
    ) -> None:
        from genq.worker.engines.hf_continuous import ContinuousDecoder

        assert isinstance(decoder, ContinuousDecoder)
        try:
            done = call()
        except Exception:
            # The running batch is lost: its items rerun as static batches, which split to
            # isolate an item that fails and record its error.
            log.exception("continuous batch failed; rerunning its items one batch at a time")
            items = decoder.clear()
            failed = [entries.pop(id(p)) for p in items]
            for p in items:
                started.pop(id(p), None)
            try:
                self.runner.run(items)
            except Exception:
                self._retry(failed)
                return
            self.scheduler.complete(failed)
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

    def _live(self, taken: list[Entry]) -> list[Entry]:
        """Entries whose job still runs; the others end now, without a result."""
        statuses = self.runner.store.statuses({e.prepared.job_id for e in taken})
        ended = [e for e in taken if statuses[e.prepared.job_id] in TERMINAL | {None}]
        if ended:
            self.scheduler.complete(ended)
        return [e for e in taken if statuses[e.prepared.job_id] not in TERMINAL | {None}]

    def _drop_cancelled(
        self, decoder: object, entries: dict[int, Entry], started: dict[int, float]
    ) -> None:
        from genq.worker.engines.hf_continuous import ContinuousDecoder

        assert isinstance(decoder, ContinuousDecoder)
        jobs = {e.prepared.job_id for e in entries.values()}
        statuses = self.runner.store.statuses(jobs)
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
