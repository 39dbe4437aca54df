"""Turns queue messages into prepared items, and batches of them into stored results.

Idempotent by construction: items whose job has ended, or that already have a result (a
redelivered message), are not run again, and the store keeps the first result written.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

from genq.schema import (
    TERMINAL,
    ErrorInfo,
    ItemErrorType,
    ItemResult,
    Timing,
    Usage,
    WorkChunk,
    WorkItem,
)
from genq.settings import Settings
from genq.store import BatchStats, JobStore
from genq.worker.batching import plan_batches
from genq.worker.engines.base import Engine, Generation, Prepared

log = logging.getLogger(__name__)


class ItemRejected(Exception):
    """An item that cannot run (checked against the tokenizer and the model's context)."""

    def __init__(self, error_type: ItemErrorType, message: str) -> None:
        super().__init__(message)
        self.error = ErrorInfo(type=error_type.value, message=message)


class BatchRunner:
    """Prepares work items for an engine, runs batches, and records every result."""

    def __init__(self, engine: Engine, store: JobStore, settings: Settings, worker_id: str):
        self.engine = engine
        self.store = store
        self.settings = settings
        self.worker_id = worker_id

    def admit(self, chunk: WorkChunk) -> list[Prepared]:
        """The chunk's items that still need generating, tokenised and checked.

        Items that cannot run (too long for the context, ...) get their error result here.
        """
        status, done = self.store.admit(chunk.job_id, [item.index for item in chunk.items])
        if status is None or status in TERMINAL:
            log.info(
                "skipping %d item(s) of job %s (%s)",
                len(chunk.items),
                chunk.job_id,
                status.value if status else "gone",
            )
            return []
        ready: list[Prepared] = []
        rejected: list[ItemResult] = []
        for item in chunk.items:
            if item.index in done:
                continue
            started = time.time()
            try:
                ready.append(self._prepare(chunk, item))
            except ItemRejected as e:
                result = self._result(chunk.job_id, chunk.enqueued_at, item, started)
                result.error = e.error
                rejected.append(result)
        if rejected:
            self.store.record({chunk.job_id: rejected})
        return ready

    def run(self, batch: Sequence[Prepared]) -> None:
        """Generate for one batch and record its results; items of ended jobs are skipped."""
        # A job cancelled while its items wait stops at the next batch boundary.
        statuses = self.store.statuses({p.job_id for p in batch})
        live = [p for p in batch if statuses[p.job_id] not in TERMINAL | {None}]
        # Items that cannot share a generate call (sampling parameters) run apart.
        budget = self.settings.resolved_max_batch_tokens(self.engine.device)
        for part in plan_batches(live, self.settings.max_batch_size, budget):
            self._run(part)

    def process(self, chunks: Sequence[WorkChunk]) -> None:
        """Admit and run ``chunks`` synchronously (the worker loop does this incrementally)."""
        self.run([p for chunk in chunks for p in self.admit(chunk)])

    def finish(
        self, done: Sequence[tuple[Prepared, Generation]], started: Mapping[int, float], rows: int
    ) -> None:
        """Record items a continuous batch finished (``started``: by ``id`` of the item)."""
        by_job: dict[str, list[ItemResult]] = defaultdict(list)
        tokens = 0
        for prepared, generation in done:
            tokens += generation.completion_tokens
            result = self._completed(prepared, generation, started[id(prepared)], rows)
            by_job[prepared.job_id].append(result)
        self.store.record(by_job, BatchStats(self.worker_id, rows, len(done), tokens))

    def _prepare(self, chunk: WorkChunk, item: WorkItem) -> Prepared:
        ids = self.engine.encode(item.prompt)
        if not ids:
            raise ItemRejected(ItemErrorType.EMPTY_PROMPT, "the prompt tokenises to no tokens")
        params = item.params
        if params.max_new_tokens is not None:
            max_new = params.max_new_tokens
        else:
            assert params.max_length is not None
            max_new = params.max_length - len(ids)
            if max_new < 1:
                raise ItemRejected(
                    ItemErrorType.INVALID_PARAMS,
                    f"max_length={params.max_length} leaves no room for new tokens after the "
                    f"prompt's {len(ids)} tokens; raise max_length or use max_new_tokens",
                )
        context = self.engine.max_context
        if context is not None and len(ids) + max_new > context:
            if params.truncate and context - max_new >= 1:
                ids = ids[len(ids) + max_new - context :]  # keep the end of the prompt
            else:
                raise ItemRejected(
                    ItemErrorType.CONTEXT_LENGTH_EXCEEDED,
                    f"the prompt has {len(ids)} tokens and {max_new} new tokens were asked "
                    f"for: {len(ids) + max_new} exceeds the model's context of {context} "
                    "tokens; shorten the prompt, lower max_new_tokens, or set truncate=true "
                    "to drop the start of the prompt",
                )
        return Prepared(chunk.job_id, chunk.enqueued_at, item, ids, max_new)

    def _run(self, batch: list[Prepared]) -> None:
        started = time.time()
        rows = sum(p.rows for p in batch)
        try:
            generations = self.engine.generate(batch)
        except Exception as e:
            if len(batch) > 1:
                # Split to isolate the item that fails; its neighbours still get results.
                log.warning("batch of %d failed (%s); splitting it", len(batch), e)
                half = len(batch) // 2
                self._run(batch[:half])
                self._run(batch[half:])
                return
            log.exception("item %s of job %s failed", batch[0].item.index, batch[0].job_id)
            error = ErrorInfo(
                type=ItemErrorType.GENERATION_ERROR.value, message=f"{type(e).__name__}: {e}"
            )
            result = self._result(batch[0].job_id, batch[0].enqueued_at, batch[0].item, started)
            result.error = error
            result.usage = Usage(prompt_tokens=len(batch[0].prompt_ids))
            self.store.record({batch[0].job_id: [result]})
            return
        by_job: dict[str, list[ItemResult]] = defaultdict(list)
        tokens = 0
        for prepared, generation in zip(batch, generations, strict=True):
            tokens += generation.completion_tokens
            by_job[prepared.job_id].append(self._completed(prepared, generation, started, rows))
        self.store.record(by_job, BatchStats(self.worker_id, rows, len(batch), tokens))

    def _completed(
        self, prepared: Prepared, generation: Generation, started: float, rows: int
    ) -> ItemResult:
        result = self._result(prepared.job_id, prepared.enqueued_at, prepared.item, started)
        result.outputs = generation.outputs
        result.finish_reasons = generation.finish_reasons
        result.finish_reason = generation.finish_reasons[0] if generation.finish_reasons else None
        result.usage = Usage(
            prompt_tokens=len(prepared.prompt_ids), completion_tokens=generation.completion_tokens
        )
        assert result.timing is not None
        result.timing.batch_size = rows
        return result

    def _result(
        self, job_id: str, enqueued_at: float, item: WorkItem, started: float
    ) -> ItemResult:
        return ItemResult(
            custom_id=item.custom_id,
            index=item.index,
            prompt=item.prompt,
            timing=Timing(enqueued_at=enqueued_at, started_at=started, finished_at=time.time()),
            worker_id=self.worker_id,
        )
