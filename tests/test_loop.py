"""The engine loop against a real Redis: results held through a write failure, suspects."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from genq.connection import connect
from genq.producer.client import Client
from genq.schema import ItemResult, Priority, WorkChunk
from genq.settings import Settings
from genq.submissions import NewJob, SubmissionStore
from genq.worker.engines.base import Generation, Prepared
from genq.worker.engines.null import NullEngine
from genq.worker.item import Delivery
from genq.worker.loop import EngineLoop
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Scheduler
from genq.worker.work_store import WorkStore


class OneStepDecoder:
    """A continuous decoder whose rows all finish at the next step (no model)."""

    def __init__(self) -> None:
        self.rows: list[Prepared] = []
        self.generated = 0

    @property
    def active_rows(self) -> int:
        return len(self.rows)

    def projected_tokens(self, joining: Sequence[Prepared] = ()) -> int:
        return len(self.rows) + len(joining)

    def add(self, items: Sequence[Prepared]) -> list[tuple[Prepared, Generation]]:
        self.rows += items
        return []

    def step(self) -> list[tuple[Prepared, Generation]]:
        done, self.rows = self.rows, []
        self.generated += len(done)
        return [(p, Generation([""], ["length"], 0, [0])) for p in done]

    def clear(self) -> list[Prepared]:
        cleared, self.rows = self.rows, []
        return cleared

    def drop(self, job_ids: set[str]) -> list[Prepared]:
        return []


class ContinuousNull(NullEngine):
    def __init__(self) -> None:
        self.made = OneStepDecoder()

    def decoder(self) -> OneStepDecoder:
        return self.made


class FlakyStore(SubmissionStore, WorkStore):
    """Fails the first ``failures`` result writes, as a Redis blip would."""

    def __init__(self, failures: int, *args: Any) -> None:
        super().__init__(*args)
        self.failures = failures
        self.blips = 0

    def record_new(self, *args: Any, **kwargs: Any) -> list[ItemResult]:
        if self.failures > 0:
            self.failures -= 1
            self.blips += 1
            raise redis.exceptions.ConnectionError("simulated blip")
        return super().record_new(*args, **kwargs)


def test_results_held_through_a_failed_write_are_written_without_new_work(
    settings: Settings, client: Client
) -> None:
    settings = settings.model_copy(update={"batching": "continuous", "max_wait_ms": 10})
    store = FlakyStore(1, connect(settings.redis_url), settings.result_ttl_s)
    engine = ContinuousNull()
    runner = BatchRunner(engine, store, settings, "w")
    scheduler = Scheduler(settings.max_batch_size, 10**6, settings.max_wait_ms)
    loop = EngineLoop(scheduler, runner, settings)
    loop.start()
    loop.warmed.wait()
    spec = client.validate(["hello", "world"], {"max_new_tokens": 4})
    job_id = store.create_job(f"held-{time.time_ns()}", NewJob.of(spec)).id
    acked = threading.Event()
    chunk = WorkChunk.model_validate_json(
        spec.messages(job_id, time.time(), max_items=10, priority=Priority.NORMAL)[0]
    )
    ready = runner.admit(chunk)
    scheduler.add(Delivery("tag-1", job_id, len(ready), acked.set), ready)
    try:
        # Nothing else arrives: the held results must still be written, and the message acked.
        assert acked.wait(10), "the message was never acknowledged"
        info = store.get(job_id)
        assert (info.status.value, info.completed) == ("completed", 2)
        assert engine.made.generated == 2  # written once Redis answered, not generated again
        assert store.blips == 1  # the write did fail once
    finally:
        scheduler.close()
        loop.join(10)
