"""Waiting on a job and following its results as they are written (genq/producer/waiting.py),
on a real Redis: results written by the store's own script, by a real worker for the last."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import WorkerProcess

from genq.connection import connect
from genq.errors import BrokerUnavailableError, WaitTimeoutError
from genq.producer.cli_output import follow_to_output
from genq.producer.client import Client
from genq.producer.waiting import follow, polls
from genq.schema import ItemResult
from genq.settings import Settings
from genq.worker.work_store import WorkStore


def idle_client(settings: Settings, queue: str) -> Client:
    """A client on a queue no worker consumes: these tests write the results themselves."""
    return Client(settings=settings.model_copy(update={"queue": queue}))


def result(index: int) -> ItemResult:
    return ItemResult(custom_id=str(index), index=index, prompt=f"p{index}", outputs=[f"o{index}"])


def test_results_are_followed_in_input_order_as_they_are_written(settings: Settings) -> None:
    client = idle_client(settings, "follow-order")
    job_id = client.submit([f"p{i}" for i in range(5)])
    store = WorkStore(connect(settings.redis_url), 60)
    first_seen = threading.Event()
    waited: list[bool] = []

    def write() -> None:
        store.record({job_id: [result(2)]})  # past a gap: held back until 0 and 1 come
        store.record({job_id: [result(0)]})
        # The rest is written only once the follower has result 0: followed, not read after.
        waited.append(first_seen.wait(30))
        store.record({job_id: [result(3), result(1)]})
        store.record({job_id: [result(4)]})

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    for got in client.follow_results(job_id, timeout_s=60, poll_interval_s=0.02, page_size=2):
        seen.append(got.index)
        assert got.outputs == [f"o{got.index}"]
        first_seen.set()
    writer.join(30)
    assert not writer.is_alive()
    assert waited == [True]  # result 0 reached the follower while the job still ran
    assert seen == [0, 1, 2, 3, 4]
    assert client.status(job_id).status.value == "completed"


def test_following_a_cancelled_job_ends_with_the_results_it_has(settings: Settings) -> None:
    client = idle_client(settings, "follow-cancel")
    job_id = client.submit([f"p{i}" for i in range(4)])
    WorkStore(connect(settings.redis_url), 60).record({job_id: [result(0), result(2)]})
    client.cancel(job_id)
    followed = client.follow_results(job_id, timeout_s=30, poll_interval_s=0.02)
    assert [r.index for r in followed] == [0, 2]  # 1 and 3 never come: skipped, no hang


def test_following_times_out_as_waiting_does(settings: Settings) -> None:
    client = idle_client(settings, "follow-timeout")
    job_id = client.submit(["never run"])
    with pytest.raises(WaitTimeoutError, match="still queued"):
        list(client.follow_results(job_id, timeout_s=0.3, poll_interval_s=0.05))


def test_a_real_workers_results_are_followed_to_the_last(
    worker: WorkerProcess, client: Client
) -> None:
    job_id = client.submit([f"item {i}" for i in range(40)], {"max_new_tokens": 2})
    followed = list(client.follow_results(job_id, timeout_s=120, poll_interval_s=0.05))
    assert [r.index for r in followed] == list(range(40))
    assert all(r.error is None for r in followed)
    assert client.status(job_id).completed == 40


def test_an_ended_jobs_results_are_read_through_an_outage(settings: Settings) -> None:
    client = idle_client(settings, "follow-outage")
    job_id = client.submit([f"p{i}" for i in range(3)])
    store = WorkStore(connect(settings.redis_url), 60)
    store.record({job_id: [result(0), result(1), result(2)]})
    statuses = polls(client, job_id, 30, 0.02, None)
    outages = [BrokerUnavailableError("Redis away"), BrokerUnavailableError("still away")]

    def read(indexes: list[int]) -> dict[int, ItemResult]:
        if outages:  # the first reads after the job's last status meet an outage
            raise outages.pop(0)
        return client.store.results_at(job_id, indexes)

    assert [r.index for r in follow(statuses, read, page_size=2)] == [0, 1, 2]
    assert outages == []


def test_a_page_size_below_one_is_refused(client: Client) -> None:
    with pytest.raises(ValueError, match="page_size"):
        client.follow_results("f" * 32, page_size=0)


def test_output_written_before_a_timeout_is_kept(settings: Settings, tmp_path: Path) -> None:
    client = idle_client(settings, "follow-partial")
    job_id = client.submit([f"p{i}" for i in range(3)])
    WorkStore(connect(settings.redis_url), 60).record({job_id: [result(0), result(1)]})
    out = tmp_path / "results.jsonl"
    with pytest.raises(WaitTimeoutError):
        follow_to_output(client, job_id, str(out), timeout_s=0.5)
    lines = out.read_text().splitlines()
    assert [ItemResult.model_validate_json(line).index for line in lines] == [0, 1]
