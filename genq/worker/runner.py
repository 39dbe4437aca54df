"""Admits queue messages (their items prepared by :mod:`genq.worker.preparing`), and turns
batches of them into stored results.

Idempotent by construction: items whose job has ended, or that already have a result (a
redelivered message), are not run again, and the store keeps the first result written.

Failures stay per item: a batch that raises is split in halves until the item that fails is
alone; that item is retried (GENQ_MAX_ATTEMPTS tries in all, with exponential backoff: the
retry policy is the item's, :class:`~genq.worker.item.Item`; the caller puts it back in the
pool) and then recorded with its error. Running out of device memory also halves the batch,
and halves the worker's token budget for a while.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from genq.connection import stores_split
from genq.errors import RefusedMessageError
from genq.feeder import Feeder
from genq.leases import Lease
from genq.logs import log_batch
from genq.registry import BatchStats
from genq.schema import (
    TERMINAL,
    ItemErrorType,
    ItemResult,
    JobStatus,
    WorkChunk,
    WorkItem,
)
from genq.settings import OOM_RECOVERY_BATCHES, Settings
from genq.worker.batching import batch_cost, plan_batches
from genq.worker.engines.base import Engine, Generation, Prepared, is_out_of_memory
from genq.worker.item import Delivery, Item
from genq.worker.metrics import WorkerMetrics
from genq.worker.preparing import ItemRejected, check_limits, first_problem, prepare
from genq.worker.results import completed_result, error_result
from genq.worker.work_store import WorkStore

log = logging.getLogger(__name__)


class BatchRunner:
    """Prepares work items for an engine, runs batches, and records every result."""

    def __init__(
        self,
        engine: Engine,
        store: WorkStore,
        settings: Settings,
        worker_id: str,
        metrics: WorkerMetrics | None = None,
    ):
        self.engine = engine
        self.store = store
        self.metrics = metrics or WorkerMetrics()
        self.settings = settings
        self.worker_id = worker_id
        # kombu's keys are on the results' Redis: a message's ack rides with its last results.
        self.settles_leases = not stores_split(settings)
        self.configured_budget = settings.resolved_max_batch_tokens(engine.device)
        self.budget = self.configured_budget  # padded tokens per batch; lowered after an OOM
        self._since_oom = 0

    def admit(
        self, chunk: WorkChunk, refill: Feeder | None = None, lease: Lease | None = None
    ) -> list[Prepared]:
        """The chunk's items that still need generating, tokenised and checked (``refill``:
        a feeder on the store's Redis, refilled in the same round trip; ``lease``: the
        message's, written in it: :meth:`WorkStore.admit`).

        Items that cannot run (too long for the context, ...) get their error result here. A
        chunk that does not match its job's record (no such job, an index outside the job, a
        prompt past the limit, bad parameters) raises :class:`RefusedMessageError`, and
        nothing of the job changes.
        """
        check_limits(chunk, self.settings)
        indexes = [item.index for item in chunk.items]
        admission = self.store.admit(chunk.job_id, indexes, refill, lease)
        if admission.status is None:
            raise RefusedMessageError(
                f"it names job {chunk.job_id}, which does not exist (never submitted to this "
                "Redis, or expired after its TTL)"
            )
        if admission.bad_index is not None:
            raise RefusedMessageError(
                f"item index {admission.bad_index} is not one of job {chunk.job_id}'s "
                f"{admission.total} items (0..{admission.total - 1})"
            )
        if admission.params is None:
            raise RefusedMessageError(
                f"job {chunk.job_id}'s record has no parameters (written by another genq version?)"
            )
        try:
            items = [c.resolve(admission.params) for c in chunk.items]
        except ValidationError as e:
            raise RefusedMessageError(
                f"an item's params do not validate with the job's ({first_problem(e)})"
            ) from e
        status, done = admission.status, admission.done
        if status is JobStatus.EXPIRED:
            self._record_expired(
                chunk.job_id, chunk.enqueued_at, [i for i in items if i.index not in done]
            )
        if status in TERMINAL:
            log.info("skipping %d item(s) of job %s (%s)", len(items), chunk.job_id, status.value)
            return []
        ready: list[Prepared] = []
        rejected: list[ItemResult] = []
        for item in items:
            if item.index in done:
                continue
            started = time.time()
            try:
                ready.append(prepare(self.engine, self.settings, chunk, item))
            except ItemRejected as e:
                rejected.append(
                    error_result(
                        self.worker_id,
                        chunk.enqueued_at,
                        item,
                        started,
                        e.error.type,
                        e.error.message,
                    )
                )
        if rejected:
            self._record({chunk.job_id: rejected})
        return ready

    def run(self, batch: Sequence[Item], checked: bool = False) -> list[Item]:
        """Generate for one batch and record its results; items of ended jobs are skipped
        (``checked``: the caller has just checked, spare the round trip).

        Returns the items that failed and are to be tried again, each from its ``not_before``.
        """
        live = list(batch)
        if not checked:
            # A job cancelled while its items wait stops at the next batch boundary.
            live = self.live(batch, self.store.statuses({i.job_id for i in batch}))
        by_prepared = {item.prepared: item for item in live}
        # Items that cannot share a generate call (sampling parameters) run apart.
        retry: list[Item] = []
        for part in plan_batches(list(by_prepared), self.settings.max_batch_size, self.budget):
            retry += self._run([by_prepared[p] for p in part])
        return retry

    def live(self, items: Sequence[Item], statuses: Mapping[str, JobStatus | None]) -> list[Item]:
        """The items whose job still runs. The others end here: items of an expired job get
        an ``expired`` result, those of a cancelled (or vanished) job none."""
        live: list[Item] = []
        expired_by_job: dict[str, list[Prepared]] = defaultdict(list)
        for item in items:
            status = statuses.get(item.job_id)
            if status is not None and status not in TERMINAL:
                live.append(item)
            elif status is JobStatus.EXPIRED:
                expired_by_job[item.job_id].append(item.prepared)
        for job_id, expired in expired_by_job.items():
            self._record_expired(job_id, expired[0].enqueued_at, [p.item for p in expired])
        return live

    def record_abandoned(self, item: Item, starts: int) -> None:
        """End an item that was started ``starts`` times without ever ending: each time its
        worker died or stopped mid-item (a crash in the engine, say). It is not run again."""
        prepared = item.prepared
        result = error_result(
            self.worker_id,
            prepared.enqueued_at,
            prepared.item,
            time.time(),
            ItemErrorType.WORKER_LOST,
            f"the item was started {starts} times and each time its worker died or stopped "
            "before it ended (a crash in the model?); it was not tried again",
            len(prepared.prompt_ids),
        )
        log.error(
            "item %d of job %s: its worker died %d times while generating it; giving up",
            prepared.item.index,
            prepared.job_id,
            starts,
        )
        self._record({prepared.job_id: [result]})

    def _record_expired(self, job_id: str, enqueued_at: float, items: Sequence[WorkItem]) -> None:
        if not items:
            return
        now = time.time()
        message = "the job's deadline (expires_in_s) passed before this item was generated"
        results = [
            error_result(self.worker_id, enqueued_at, item, now, ItemErrorType.EXPIRED, message)
            for item in items
        ]
        self._record({job_id: results})

    def process(self, chunks: Sequence[WorkChunk]) -> None:
        """Admit and run ``chunks`` synchronously, retries included (no backoff)."""
        todo: list[Item] = []
        for chunk in chunks:
            ready = self.admit(chunk)
            # Not from a queue: nothing to acknowledge.
            message = Delivery("", chunk.job_id, len(ready), lambda: None, priority=chunk.priority)
            todo += [Item(p, message, priority=chunk.priority) for p in ready]
        while todo:
            for item in todo:
                item.attempts += 1
            todo = self.run(todo)

    def out_of_memory(self, tokens: int) -> None:
        """A batch of ``tokens`` padded tokens ran out of device memory: halve the budget."""
        self.engine.release_memory()
        lowered = max(min(self.budget, tokens) // 2, 1)
        if lowered < self.budget:
            log.warning(
                "out of device memory on a batch of %d tokens: batch token budget lowered from "
                "%d to %d for the next %d batches (set GENQ_MAX_BATCH_TOKENS lower to avoid this)",
                tokens,
                self.budget,
                lowered,
                OOM_RECOVERY_BATCHES,
            )
            self.budget = lowered
        self._since_oom = 0

    def batch_done(self) -> None:
        """A batch (or decode step) ran without running out of memory."""
        self._since_oom += 1
        if self._since_oom >= OOM_RECOVERY_BATCHES and self.budget < self.configured_budget:
            self.budget = min(self.budget * 2, self.configured_budget)
            self._since_oom = 0

    def finish(self, done: Sequence[tuple[Item, Generation]], rows: int) -> None:
        """Record items a continuous batch of ``rows`` rows finished (timed from their
        ``started_at``)."""
        by_job: dict[str, list[ItemResult]] = defaultdict(list)
        tokens = 0
        for item, generation in done:
            tokens += generation.completion_tokens
            by_job[item.job_id].append(completed_result(self.worker_id, item, generation, rows))
        # Rows overlap in a continuous batch: their summed lifetimes over its rows ~ wall time.
        busy_s = sum(time.time() - item.started_at for item, _ in done) / max(rows, 1)
        started = min(item.started_at for item, _ in done)
        self._batch_ended(by_job, [item for item, _ in done], rows, tokens, started, busy_s)

    def _batch_ended(
        self,
        results_by_job: Mapping[str, Sequence[ItemResult]],
        items: Sequence[Item],
        rows: int,
        tokens: int,
        started: float,
        busy_s: float,
    ) -> None:
        """Write a batch's results with its worker counters (``busy_s``: its generation,
        the write excluded) and the acks of the messages they end, then count it in the
        metrics and log its line."""
        prepared = [item.prepared for item in items]
        stats = BatchStats(self.worker_id, rows, len(prepared), tokens, busy_s)
        settling = self._settling(items)
        try:
            stored = self.store.record_new(results_by_job, stats, settling)
        except Exception:
            # Written or not (a lost reply), the loop writes them again, settling them then;
            # until then their leases are renewed (one already gone shows as lost: harmless).
            for item in items:
                item.delivery.settling = False
            raise
        self.metrics.results(stored)
        self.metrics.batch(rows, tokens)
        log_batch(
            log,
            self.settings,
            worker=self.worker_id,
            engine=self.engine.name,
            size=rows,
            items=len(prepared),
            prompt_tokens=sum(len(p.prompt_ids) for p in prepared),
            tokens=tokens,
            ms=(time.time() - started) * 1000,
            prompt=prepared[0].item.prompt,
        )

    def _record(self, results_by_job: Mapping[str, Sequence[ItemResult]]) -> None:
        """Write results (first write wins) and count in the metrics the ones written."""
        self.metrics.results(self.store.record_new(results_by_job))

    def _settling(self, items: Sequence[Item]) -> dict[str, list[str]]:
        """Per job, the tags of the messages whose every unfinished item is in ``items``,
        marked ``settling``: their leases end with these items' results (their ack)."""
        settle: dict[str, list[str]] = defaultdict(list)
        if not self.settles_leases:
            return settle
        ending = Counter(item.delivery for item in items)
        for delivery, count in ending.items():
            # A message not from a queue has no tag; one released is not this worker's to ack.
            if delivery.tag and not delivery.done and delivery.remaining == count:
                delivery.settling = True
                settle[delivery.job_id].append(delivery.tag)
        return settle

    def _run(self, batch: list[Item]) -> list[Item]:
        started = time.time()
        for item in batch:
            item.started_at = started
        prepared = [item.prepared for item in batch]
        rows = sum(p.rows for p in prepared)
        try:
            generations = self.engine.generate(prepared)
        except Exception as e:
            oom = is_out_of_memory(e)
            if oom:
                longest = max(len(p.prompt_ids) + p.max_new_tokens for p in prepared)
                self.out_of_memory(rows * longest)
            if len(batch) > 1:
                # Split to isolate the item that fails; its neighbours still get results.
                log.warning("batch of %d failed (%s); splitting it", len(batch), e)
                half = len(batch) // 2
                return self._run(batch[:half]) + self._run(batch[half:])
            return self._failed(batch[0], e, oom)
        self.batch_done()
        by_job: dict[str, list[ItemResult]] = defaultdict(list)
        tokens = 0
        for item, generation in zip(batch, generations, strict=True):
            tokens += generation.completion_tokens
            by_job[item.job_id].append(completed_result(self.worker_id, item, generation, rows))
        busy_s = time.time() - started
        self._batch_ended(by_job, batch, rows, tokens, started, busy_s)
        self.metrics.kv(batch_cost(prepared), self.budget)
        return []

    def _failed(self, item: Item, error: Exception, oom: bool) -> list[Item]:
        """Count a failed try of one item: retry it later (the item's retry policy sets when),
        or record its error."""
        prepared, attempts = item.prepared, item.attempts
        if item.retryable(self.settings.max_attempts):
            delay_s = item.next_retry_delay(self.settings.retry_backoff_s)
            item.not_before = time.monotonic() + delay_s
            log.warning(
                "item %d of job %s failed (attempt %d of %d: %s: %s); retrying in %.1f s",
                prepared.item.index,
                prepared.job_id,
                attempts,
                self.settings.max_attempts,
                type(error).__name__,
                error,
                delay_s,
            )
            return [item]
        log.error(
            "item %d of job %s failed %d times; recording the error",
            prepared.item.index,
            prepared.job_id,
            attempts,
            exc_info=error,
        )
        kind = ItemErrorType.OUT_OF_MEMORY if oom else ItemErrorType.GENERATION_ERROR
        result = error_result(
            self.worker_id,
            prepared.enqueued_at,
            prepared.item,
            item.started_at,
            kind,
            f"{type(error).__name__}: {error} (after {attempts} attempts)",
            len(prepared.prompt_ids),
        )
        self._record({prepared.job_id: [result]})
        return []
