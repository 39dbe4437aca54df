"""The worker's flush handling against a real Redis and the real tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genq.producer.client import Client
from genq.schema import JobStatus, WorkChunk
from genq.settings import Settings
from genq.store import JobStore, connect
from genq.worker.engines.hf import HFEngine
from genq.worker.engines.null import NullEngine
from genq.worker.runner import BatchRunner


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine.load(str(tiny_model), "cpu")


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(connect(settings.redis_url), settings.result_ttl_s)


def chunk_for(client: Client, items: list[object], **params: object) -> tuple[str, WorkChunk]:
    spec = client.validate(items, params)  # type: ignore[arg-type]
    job_id = client.store.create_job("t" + str(time.time_ns()), spec).id
    return job_id, WorkChunk(job_id=job_id, enqueued_at=time.time(), items=spec.work_items())


def test_prompt_too_long_for_the_context_fails_alone(
    client: Client, store: JobStore, settings: Settings, engine: HFEngine
) -> None:
    long_prompt = "word " * 200
    job_id, chunk = chunk_for(
        client, ["short prompt", long_prompt], max_new_tokens=8, do_sample=False
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    ok, bad = store.results(job_id)
    assert ok.error is None
    assert ok.usage.completion_tokens == 8
    assert bad.error is not None
    assert bad.error.type == "context_length_exceeded"
    assert "exceeds the model's context of 128 tokens" in bad.error.message
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 1, 1)


def test_max_length_counts_the_prompt(
    client: Client, store: JobStore, settings: Settings, engine: HFEngine
) -> None:
    prompt = "Write a tagline for a bakery"
    job_id, chunk = chunk_for(
        client,
        [prompt, {"prompt": prompt, "params": {"max_length": 2}}],
        max_length=20,
        do_sample=False,
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    good, bad = store.results(job_id)
    assert good.usage.prompt_tokens + good.usage.completion_tokens == 20
    assert bad.error is not None
    assert bad.error.type == "invalid_params"


def test_a_redelivered_chunk_produces_no_second_result(
    client: Client, store: JobStore, settings: Settings
) -> None:
    job_id, chunk = chunk_for(client, ["a", "b", "c"])
    runner = BatchRunner(NullEngine(), store, settings, "w")
    runner.process([chunk])
    first = store.results(job_id)
    runner.process([chunk])
    assert store.results(job_id) == first
    info = store.get(job_id)
    assert (info.completed, info.failed, info.status) == (3, 0, JobStatus.COMPLETED)


def test_items_of_a_cancelled_job_are_not_generated(
    client: Client, store: JobStore, settings: Settings
) -> None:
    job_id, chunk = chunk_for(client, ["a", "b"])
    store.cancel(job_id)
    BatchRunner(NullEngine(), store, settings, "w").process([chunk])
    assert store.results(job_id) == []


def test_a_failing_item_is_isolated_from_its_batch(
    client: Client, store: JobStore, settings: Settings
) -> None:
    class Flaky(NullEngine):
        def generate(self, batch):  # type: ignore[no-untyped-def]
            if any(p.item.prompt == "poison" for p in batch):
                raise RuntimeError("engine failed on poison")
            return super().generate(batch)

    job_id, chunk = chunk_for(client, ["a", "poison", "c", "d"])
    BatchRunner(Flaky(), store, settings, "w").process([chunk])
    results = store.results(job_id)
    assert [r.error is None for r in results] == [True, False, True, True]
    assert results[1].error is not None
    assert "poison" in results[1].error.message


def test_items_with_different_sampling_params_run_in_separate_generate_calls(
    client: Client, store: JobStore, settings: Settings, engine: HFEngine
) -> None:
    job_id, chunk = chunk_for(
        client,
        [
            {"prompt": "a", "params": {"do_sample": True, "num_return_sequences": 3}},
            {"prompt": "b", "params": {"do_sample": False}},
        ],
        max_new_tokens=4,
    )
    BatchRunner(engine, store, settings, "w").run(
        [p for p in BatchRunner(engine, store, settings, "w").admit(chunk)]
    )
    sampled, greedy = store.results(job_id)
    assert len(sampled.outputs) == 3
    assert len(greedy.outputs) == 1


def test_truncate_keeps_the_end_of_a_prompt_too_long_for_the_context(
    client: Client, store: JobStore, settings: Settings, engine: HFEngine
) -> None:
    long_prompt = "word " * 200
    job_id, chunk = chunk_for(
        client, [long_prompt], max_new_tokens=8, do_sample=False, truncate=True
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    (result,) = store.results(job_id)
    assert result.error is None
    assert result.prompt == long_prompt
    assert result.usage.prompt_tokens == 128 - 8  # the context less the new tokens
    assert result.usage.completion_tokens == 8
