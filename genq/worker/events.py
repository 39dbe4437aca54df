"""Celery's task events for genq's messages (GENQ_CELERY_EVENTS=1), so that Flower and
``celery events`` list each queue message as a task.

genq's Strategy replaces Celery's, which would send these: a message is *received* when it is
admitted into the worker's pool, *succeeded* when it is acknowledged (every item ended), and
*rejected* when it is refused into the dead letters. No arguments: they hold prompts; the job
and the item count stand in for them.
"""

from __future__ import annotations

import time
from typing import Any

from genq.broker import GENERATE_TASK
from genq.schema import WorkChunk

# Messages released unacknowledged (a lost connection) never succeed: their start times are
# dropped oldest first beyond this many.
EVENT_TIMES_KEPT = 4096


class TaskEvents:
    """Sends a message's task events through the consumer's event dispatcher."""

    def __init__(self, eventer: Any) -> None:
        self.eventer = eventer
        self.received_at: dict[str, float] = {}  # task id -> when received, for its runtime

    def received(self, message: Any, chunk: WorkChunk, items: int) -> None:
        task_id = _task_id(message)
        if len(self.received_at) >= EVENT_TIMES_KEPT:
            del self.received_at[next(iter(self.received_at))]
        self.received_at[task_id] = time.monotonic()
        self.eventer.send(
            "task-received",
            uuid=task_id,
            name=GENERATE_TASK,
            args=f"job={chunk.job_id} items={items}",
            kwargs="",
            root_id=task_id,
            parent_id=None,
            retries=0,
            eta=None,
            expires=None,
        )

    def succeeded(self, message: Any) -> None:
        """Every item of a received message ended (a message never received sends nothing)."""
        started = self.received_at.pop(_task_id(message), None)
        if started is not None:
            self.eventer.send(
                "task-succeeded",
                uuid=_task_id(message),
                result="",
                runtime=time.monotonic() - started,
            )

    def rejected(self, message: Any) -> None:
        """The message was refused (dead-lettered), not requeued."""
        self.received_at.pop(_task_id(message), None)
        self.eventer.send("task-rejected", uuid=_task_id(message), requeue=False)


def _task_id(message: Any) -> str:
    return str(message.headers.get("id", ""))
