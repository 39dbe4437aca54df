"""The worker's flush handling against a real Redis and the real tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genq import leases
from genq.connection import connect
from genq.producer.client import Client
from genq.schema import JobStatus, Priority, WorkChunk
from genq.settings import Settings
from genq.submissions import NewJob
from genq.worker.engines.base import Prepared
from genq.worker.engines.faults import FaultPlan, FaultyEngine
from genq.worker.engines.hf import HFEngine
from genq.worker.engines.null import NullEngine
from genq.worker.item import Delivery, Item
from genq.worker.runner import BatchRunner
from genq.worker.work_store import WorkStore


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine.load(Settings(model=str(tiny_model), device="cpu"))


@pytest.fixture
def store(settings: Settings) -> WorkStore:
    return WorkStore(connect(settings.redis_url), settings.result_ttl_s)


def chunk_for(client: Client, items: list[object], **params: object) -> tuple[str, WorkChunk]:
    spec = client.validate(items, params)  # type: ignore[arg-type]
    job_id = client.store.create_job("t" + str(time.time_ns()), NewJob.of(spec)).id
    (message,) = spec.messages(job_id, time.time(), max_items=10**6, priority=Priority.NORMAL)
    return job_id, WorkChunk.model_validate_json(message)


def pool_items(prepared: list[Prepared]) -> list[Item]:
    """Prepared items as the engine loop hands them to the runner: counted, first try."""
    delivery = Delivery("tag", "job", len(prepared), lambda: None)
    return [Item(p, delivery, seq, attempts=1) for seq, p in enumerate(prepared)]


def test_prompt_too_long_for_the_context_fails_alone(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    long_prompt = "word " * 200
    job_id, chunk = chunk_for(
        client, ["short prompt", long_prompt], max_new_tokens=8, do_sample=False
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    ok, bad = client.store.results(job_id)
    assert ok.error is None
    assert ok.usage.completion_tokens == 8
    assert bad.error is not None
    assert bad.error.type == "context_length_exceeded"
    assert "exceeds the model's context of 128 tokens" in bad.error.message
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 1, 1)


def test_max_length_counts_the_prompt(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    prompt = "Write a tagline for a bakery"
    job_id, chunk = chunk_for(
        client,
        [prompt, {"prompt": prompt, "params": {"max_length": 2}}],
        max_length=20,
        do_sample=False,
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    good, bad = client.store.results(job_id)
    assert good.usage.prompt_tokens + good.usage.completion_tokens == 20
    assert bad.error is not None
    assert bad.error.type == "invalid_params"


def test_a_redelivered_chunk_produces_no_second_result(
    client: Client, store: WorkStore, settings: Settings
) -> None:
    job_id, chunk = chunk_for(client, ["a", "b", "c"])
    runner = BatchRunner(NullEngine(), store, settings, "w")
    runner.process([chunk])
    first = client.store.results(job_id)
    runner.process([chunk])
    assert client.store.results(job_id) == first
    info = store.get(job_id)
    assert (info.completed, info.failed, info.status) == (3, 0, JobStatus.COMPLETED)


def test_the_batch_that_ends_a_message_takes_its_lease_with_its_results(
    client: Client, store: WorkStore, settings: Settings
) -> None:
    job_id, chunk = chunk_for(client, ["a", "b", "c"])
    runner = BatchRunner(NullEngine(), store, settings, "w")
    ready = runner.admit(chunk)
    delivery = Delivery("tag-runner", job_id, len(ready), lambda: None)
    first, *rest = [Item(p, delivery, seq, attempts=1) for seq, p in enumerate(ready)]
    store.redis.hset(leases.unacked_key(), "tag-runner", "[message]")
    store.redis.zadd(leases.unacked_index_key(), {"tag-runner": time.time()})
    assert runner.run([first]) == []
    # One item of three ended: the message is still held, under its lease.
    assert not delivery.settling
    assert store.redis.hexists(leases.unacked_key(), "tag-runner")
    delivery.remaining -= 1  # what the engine loop's Scheduler.complete counts
    assert runner.run(rest) == []
    assert delivery.settling
    assert not store.redis.hexists(leases.unacked_key(), "tag-runner")
    assert store.redis.zscore(leases.unacked_index_key(), "tag-runner") is None
    assert store.get(job_id).status is JobStatus.COMPLETED


def test_a_worker_whose_results_are_on_another_redis_leaves_acks_to_kombu(
    client: Client, settings: Settings, store: WorkStore
) -> None:
    # The store is this Redis either way: only the setting says kombu's keys are elsewhere.
    other = settings.model_copy(update={"results_url": "redis://elsewhere:6379/0"})
    runner = BatchRunner(NullEngine(), store, other, "w")
    job_id, chunk = chunk_for(client, ["a", "b"])
    ready = runner.admit(chunk)
    delivery = Delivery("tag-split", job_id, len(ready), lambda: None)
    store.redis.hset(leases.unacked_key(), "tag-split", "[message]")
    assert runner.run([Item(p, delivery, seq, attempts=1) for seq, p in enumerate(ready)]) == []
    assert store.get(job_id).status is JobStatus.COMPLETED
    assert not delivery.settling
    assert store.redis.hexists(leases.unacked_key(), "tag-split")  # kombu's ack removes it
    store.redis.hdel(leases.unacked_key(), "tag-split")


def test_items_of_a_cancelled_job_are_not_generated(
    client: Client, store: WorkStore, settings: Settings
) -> None:
    job_id, chunk = chunk_for(client, ["a", "b"])
    client.store.cancel(job_id)
    BatchRunner(NullEngine(), store, settings, "w").process([chunk])
    assert client.store.results(job_id) == []


def test_a_failing_item_is_isolated_from_its_batch(
    client: Client, store: WorkStore, settings: Settings
) -> None:
    class Flaky(NullEngine):
        def generate(self, batch):  # type: ignore[no-untyped-def]
            if any(p.item.prompt == "poison" for p in batch):
                raise RuntimeError("engine failed on poison")
            return super().generate(batch)

    job_id, chunk = chunk_for(client, ["a", "poison", "c", "d"])
    BatchRunner(Flaky(), store, settings, "w").process([chunk])
    results = client.store.results(job_id)
    assert [r.error is None for r in results] == [True, False, True, True]
    assert results[1].error is not None
    assert "poison" in results[1].error.message


def test_items_with_different_sampling_params_run_in_separate_generate_calls(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
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
        pool_items(BatchRunner(engine, store, settings, "w").admit(chunk))
    )
    sampled, greedy = client.store.results(job_id)
    assert len(sampled.outputs) == 3
    assert len(greedy.outputs) == 1


def test_truncate_keeps_the_end_of_a_prompt_too_long_for_the_context(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    long_prompt = "word " * 200
    job_id, chunk = chunk_for(
        client, [long_prompt], max_new_tokens=8, do_sample=False, truncate=True
    )
    BatchRunner(engine, store, settings, "w").process([chunk])
    (result,) = client.store.results(job_id)
    assert result.error is None
    assert result.prompt == long_prompt
    assert result.usage.prompt_tokens == 128 - 8  # the context less the new tokens
    assert result.usage.completion_tokens == 8


def faulty(engine: HFEngine, **plan: object) -> FaultyEngine:
    return FaultyEngine(engine, FaultPlan.model_validate(plan))


def test_a_poison_item_is_retried_then_fails_alone_and_its_batch_succeeds(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    prompts = [f"prompt {i}" for i in range(7)] + ["POISON prompt"]
    job_id, chunk = chunk_for(client, prompts, max_new_tokens=4, do_sample=False)
    bad = faulty(engine, raise_on=["POISON"])
    BatchRunner(bad, store, settings.model_copy(update={"max_attempts": 3}), "w").process([chunk])
    results = client.store.results(job_id)
    assert [r.ok for r in results] == [True] * 7 + [False]
    assert results[-1].error is not None
    assert results[-1].error.type == "generation_error"
    assert "injected fault for item 7 (after 3 attempts)" in results[-1].error.message
    # in batches of 8, 4 and 2 while the batch was split, then alone max_attempts times
    assert bad.raised[(job_id, 7)] == 3 + 3
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 7, 1)


def test_an_item_that_fails_fewer_times_than_max_attempts_gets_its_result(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    job_id, chunk = chunk_for(client, ["ok", "FLAKY once"], max_new_tokens=4, do_sample=False)
    bad = faulty(engine, raise_on=["FLAKY"], raise_times=2)
    BatchRunner(bad, store, settings.model_copy(update={"max_attempts": 3}), "w").process([chunk])
    assert [r.ok for r in client.store.results(job_id)] == [True, True]
    assert bad.raised[(job_id, 1)] == 2


def test_out_of_memory_halves_the_batch_and_the_token_budget(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    prompts = [f"prompt {i}" for i in range(8)]
    prompts[5] = "BIG prompt"
    job_id, chunk = chunk_for(client, prompts, max_new_tokens=4, do_sample=False)
    # Out of memory whenever the BIG item shares a batch: halving leaves it alone, then it runs.
    runner = BatchRunner(faulty(engine, oom_on=["BIG"], oom_above_rows=1), store, settings, "w")
    before = runner.budget
    runner.process([chunk])
    assert all(r.ok for r in client.store.results(job_id))
    assert runner.budget < before


def test_an_item_out_of_memory_even_alone_fails_as_out_of_memory(
    client: Client, store: WorkStore, settings: Settings, engine: HFEngine
) -> None:
    job_id, chunk = chunk_for(client, ["fine", "HUGE"], max_new_tokens=4, do_sample=False)
    runner = BatchRunner(
        faulty(engine, oom_on=["HUGE"], oom_above_rows=0),
        store,
        settings.model_copy(update={"max_attempts": 2}),
        "w",
    )
    runner.process([chunk])
    fine, huge = client.store.results(job_id)
    assert fine.ok
    assert huge.error is not None
    assert huge.error.type == "out_of_memory"
    assert "(after 2 attempts)" in huge.error.message


def test_retry_backoff_doubles_with_each_attempt(
    store: WorkStore, settings: Settings, engine: HFEngine, client: Client
) -> None:
    _, chunk = chunk_for(client, ["BAD"], max_new_tokens=2, do_sample=False)
    runner = BatchRunner(
        faulty(engine, raise_on=["BAD"]),
        store,
        settings.model_copy(update={"max_attempts": 5, "retry_backoff_s": 0.5}),
        "w",
    )
    (item,) = pool_items(runner.admit(chunk))
    delays = []
    for attempt in (1, 2, 3):
        item.attempts = attempt
        before = time.monotonic()
        (again,) = runner.run([item])
        assert again is item
        assert before <= item.not_before - item.next_retry_delay(0.5) <= time.monotonic()
        delays.append(item.next_retry_delay(0.5))
    assert delays == [0.5, 1.0, 2.0]


def test_a_failed_item_at_max_attempts_is_recorded_not_retried(
    store: WorkStore, settings: Settings, engine: HFEngine, client: Client
) -> None:
    job_id, chunk = chunk_for(client, ["BAD"], max_new_tokens=2, do_sample=False)
    runner = BatchRunner(
        faulty(engine, raise_on=["BAD"]),
        store,
        settings.model_copy(update={"max_attempts": 2}),
        "w",
    )
    (item,) = pool_items(runner.admit(chunk))
    item.attempts = 2
    assert runner.run([item]) == []
    (result,) = client.store.results(job_id)
    assert result.error is not None
    assert "(after 2 attempts)" in result.error.message
