"""The results a worker writes: one :class:`~genq.schema.ItemResult` per item that ended, with
its outputs, or with the error it ended on, timed from its message's enqueueing."""

from __future__ import annotations

import time
from typing import Any

from genq.schema import ItemErrorType, ItemResult, WorkItem
from genq.worker.engines.base import Generation
from genq.worker.item import Item


def item_result(
    worker_id: str,
    enqueued_at: float,
    item: WorkItem,
    started: float,
    batch_size: int = 0,
    **outcome: Any,
) -> ItemResult:
    """An item's result, finished now; ``outcome`` holds its other fields as plain data."""
    # One validation of plain data (pydantic's core, ~3 us) rather than nested models built
    # and then assigned field by field: a batch makes hundreds of these.
    timing = {
        "enqueued_at": enqueued_at,
        "started_at": started,
        "finished_at": time.time(),
        "batch_size": batch_size,
    }
    return ItemResult.model_validate(
        {
            "custom_id": item.custom_id,
            "index": item.index,
            "prompt": item.prompt,
            "timing": timing,
            "worker_id": worker_id,
            "params": item.overrides,
            **outcome,
        }
    )


def completed_result(worker_id: str, item: Item, generation: Generation, rows: int) -> ItemResult:
    """What ``item`` generated, in a batch of ``rows`` sequences."""
    prepared, reasons = item.prepared, generation.finish_reasons
    return item_result(
        worker_id,
        prepared.enqueued_at,
        prepared.item,
        item.started_at,
        batch_size=rows,
        outputs=generation.outputs,
        finish_reasons=reasons,
        finish_reason=reasons[0] if reasons else None,
        usage={
            "prompt_tokens": len(prepared.prompt_ids),
            "completion_tokens": generation.completion_tokens,
        },
    )


def error_result(
    worker_id: str,
    enqueued_at: float,
    item: WorkItem,
    started: float,
    error_type: ItemErrorType | str,
    message: str,
    prompt_tokens: int = 0,
) -> ItemResult:
    """An item that ended on an error: no outputs, its prompt's tokens when it was tokenised."""
    kind = error_type.value if isinstance(error_type, ItemErrorType) else error_type
    return item_result(
        worker_id,
        enqueued_at,
        item,
        started,
        error={"type": kind, "message": message},
        usage={"prompt_tokens": prompt_tokens},
    )
