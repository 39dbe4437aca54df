"""The worker's prompt pool: batches across messages and jobs, oldest first, bounded waits."""

from __future__ import annotations

import threading
import time

from genq.schema import GenerationParams, WorkItem
from genq.worker.engines.base import Prepared
from genq.worker.scheduler import Delivery, Scheduler


def items(job: str, n: int, length: int = 4, **params: object) -> list[Prepared]:
    p = GenerationParams.model_validate({"max_new_tokens": 8, **params})
    return [
        Prepared(
            job,
            0.0,
            WorkItem(index=i, custom_id=str(i), prompt="x", params=p),
            list(range(length)),
            8,
        )
        for i in range(n)
    ]


class Acks:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def delivery(self, name: str, n: int) -> Delivery:
        return Delivery(f"tag-{name}", name, n, lambda: self.acked.append(name))


def test_a_batch_spans_messages_and_jobs() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=8, max_batch_tokens=10_000, max_wait_ms=1000)
    scheduler.add(acks.delivery("a", 3), items("job-a", 3))
    scheduler.add(acks.delivery("b", 5), items("job-b", 5))
    batch = scheduler.next_batch()
    assert batch is not None
    assert {e.prepared.job_id for e in batch} == {"job-a", "job-b"}
    assert len(batch) == 8


def test_a_message_is_acked_once_when_its_last_item_ends() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(acks.delivery("a", 3), items("job-a", 3))
    first = scheduler.next_batch()
    assert first is not None
    scheduler.complete(first)
    assert acks.acked == []
    second = scheduler.next_batch()
    assert second is not None
    scheduler.complete(second)
    assert acks.acked == ["a"]
    assert scheduler.held() == 0


def test_a_message_with_nothing_to_run_is_acked_at_once() -> None:
    acks = Acks()
    Scheduler(4, 10_000, 10).add(acks.delivery("done", 0), [])
    assert acks.acked == ["done"]


def test_a_lone_prompt_waits_at_most_max_wait() -> None:
    scheduler = Scheduler(max_batch_size=32, max_batch_tokens=10_000, max_wait_ms=150)
    scheduler.add(Acks().delivery("a", 1), items("job-a", 1))
    started = time.monotonic()
    batch = scheduler.next_batch()
    waited = time.monotonic() - started
    assert batch is not None
    assert len(batch) == 1
    assert 0.1 <= waited < 1.0


def test_a_full_batch_does_not_wait() -> None:
    scheduler = Scheduler(max_batch_size=4, max_batch_tokens=10_000, max_wait_ms=10_000)
    scheduler.add(Acks().delivery("a", 4), items("job-a", 4))
    started = time.monotonic()
    assert scheduler.next_batch() is not None
    assert time.monotonic() - started < 0.5


def test_the_oldest_prompt_is_served_first_whatever_its_params() -> None:
    scheduler = Scheduler(max_batch_size=4, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(Acks().delivery("old", 1), items("old", 1, temperature=0.5))
    scheduler.add(Acks().delivery("new", 8), items("new", 8))
    batch = scheduler.next_batch()
    assert batch is not None
    assert [e.prepared.job_id for e in batch] == ["old"]


def test_retry_later_keeps_the_batch_at_the_front() -> None:
    scheduler = Scheduler(max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(Acks().delivery("a", 4), items("job-a", 4))
    first = scheduler.next_batch()
    assert first is not None
    scheduler.retry_later(first)
    again = scheduler.next_batch()
    assert again is not None
    assert [e.seq for e in again] == [e.seq for e in first]


def test_close_wakes_a_waiting_engine_loop() -> None:
    scheduler = Scheduler(4, 10_000, 10)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(scheduler.next_batch()))
    thread.start()
    time.sleep(0.1)
    scheduler.close()
    thread.join(2)
    assert got == [None]


def test_a_retried_item_waits_out_its_backoff_and_others_run_meanwhile() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=1, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(acks.delivery("a", 2), items("job-a", 2))
    (first,) = scheduler.next_batch() or []
    first.not_before = time.monotonic() + 0.3
    scheduler.retry_later([first])
    (second,) = scheduler.next_batch() or []
    assert second.prepared.item.index == 1  # the retry waits; the next item does not
    scheduler.complete([second])
    started = time.monotonic()
    (again,) = scheduler.next_batch() or []
    assert again is first
    assert time.monotonic() - started >= 0.2
    scheduler.complete([again])
    assert acks.acked == ["a"]


def test_a_released_message_is_never_acked_and_its_waiting_items_leave() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(acks.delivery("a", 4), items("job-a", 4))
    scheduler.add(acks.delivery("b", 1), items("job-b", 1))
    running = scheduler.next_batch()
    assert running is not None
    assert sorted(scheduler.held_tags()) == ["tag-a", "tag-b"]
    assert scheduler.release(["tag-a", "tag-unknown"]) == (["tag-a"], 2)  # a's 2 waiting
    assert scheduler.held_tags() == ["tag-b"]
    scheduler.complete(running)  # a's running items still end (their results get written)
    (last,) = scheduler.next_batch() or []
    assert last.prepared.job_id == "job-b"
    scheduler.complete([last])
    assert acks.acked == ["b"]


def test_a_redelivered_tag_replaces_its_earlier_delivery_which_is_never_acked() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=4, max_batch_tokens=10_000, max_wait_ms=1)
    first = Delivery("tag-x", "job-a", 2, lambda: acks.acked.append("first"))
    scheduler.add(first, items("job-a", 2))
    running = scheduler.next_batch()  # the first delivery's items are in flight
    assert running is not None
    second = Delivery("tag-x", "job-a", 2, lambda: acks.acked.append("second"))
    scheduler.add(second, items("job-a", 2))
    scheduler.complete(running)  # the earlier delivery ends: it must not ack the tag
    assert acks.acked == []
    again = scheduler.next_batch()
    assert again is not None
    scheduler.complete(again)
    assert acks.acked == ["second"]
