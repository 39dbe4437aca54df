"""The worker's prompt pool: batches across messages and jobs, in the ordering policy's order
(priority, jobs in turn, arrival), bounded waits."""

from __future__ import annotations

import threading
import time

import pytest

from genq.schema import GenerationParams, Priority, WorkItem
from genq.worker.engines.base import Prepared
from genq.worker.item import Delivery, Item, ItemStatus
from genq.worker.ordering import FairOrder, FifoOrder, OrderingPolicy
from genq.worker.scheduler import Scheduler


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

    def delivery(self, name: str, n: int, priority: Priority = Priority.NORMAL) -> Delivery:
        return Delivery(f"tag-{name}", name, n, lambda: self.acked.append(name), priority=priority)


def add_job(
    scheduler: Scheduler, acks: Acks, job: str, n: int, priority: Priority = Priority.NORMAL
) -> list[Item]:
    return scheduler.add(acks.delivery(job, n, priority), items(job, n))


def jobs_of(batch: list[Item] | None) -> list[str]:
    assert batch is not None
    return sorted(item.job_id for item in batch)


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


def test_a_message_whose_lease_goes_with_its_results_is_neither_renewed_nor_released() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1)
    scheduler.add(acks.delivery("a", 2), items("job-a", 2))
    scheduler.add(acks.delivery("b", 1), items("job-b", 1))
    running = scheduler.next_batch() or []
    assert jobs_of(running) == ["job-a", "job-a"]
    running[0].delivery.settling = True  # the runner writes a's last results with its ack
    assert scheduler.held_tags() == ["tag-b"]  # a's lease is not renewed meanwhile
    # The heartbeat's renewal found both leases gone: a's went with its results, b's expired.
    assert scheduler.release_lost(["tag-a", "tag-b"]) == (["tag-b"], 1)
    scheduler.complete(running)
    assert acks.acked == ["a"]


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


@pytest.mark.parametrize("continuous", [False, True])
def test_a_high_priority_item_admitted_after_many_normal_ones_is_in_the_next_batch(
    continuous: bool,
) -> None:
    acks = Acks()
    scheduler = Scheduler(
        max_batch_size=4, max_batch_tokens=10_000, max_wait_ms=1, order=FairOrder()
    )
    add_job(scheduler, acks, "normal", 20)
    add_job(scheduler, acks, "urgent", 1, Priority.HIGH)
    batch = scheduler.take(4, lambda _: True, wait=True) if continuous else scheduler.next_batch()
    assert "urgent" in jobs_of(batch)


def test_a_high_priority_item_waits_its_turn_under_fifo_order() -> None:
    acks = Acks()
    scheduler = Scheduler(4, 10_000, 1, FifoOrder())
    add_job(scheduler, acks, "normal", 20)
    add_job(scheduler, acks, "urgent", 1, Priority.HIGH)
    assert jobs_of(scheduler.next_batch()) == ["normal"] * 4


def serve_big_then_small(order: OrderingPolicy) -> list[list[str]]:
    """A big job's first batch runs; a small job arrives behind its 8 buffered items."""
    acks = Acks()
    scheduler = Scheduler(max_batch_size=4, max_batch_tokens=10_000, max_wait_ms=1, order=order)
    add_job(scheduler, acks, "big", 12)
    batches = [scheduler.next_batch()]
    add_job(scheduler, acks, "small", 3)
    while scheduler.pending():
        batches.append(scheduler.next_batch())
    return [jobs_of(b) for b in batches]


def test_a_small_jobs_items_interleave_with_a_big_jobs_buffered_items_under_fair_order() -> None:
    assert serve_big_then_small(FairOrder()) == [
        ["big"] * 4,
        ["big", "big", "small", "small"],  # its turns alternate with the big job's
        ["big", "big", "big", "small"],
        ["big"] * 3,
    ]


def test_a_small_jobs_items_wait_for_a_big_jobs_buffered_items_under_fifo_order() -> None:
    assert serve_big_then_small(FifoOrder()) == [
        ["big"] * 4,
        ["big"] * 4,
        ["big"] * 4,
        ["small"] * 3,
    ]


def test_a_low_item_waiting_longer_than_the_aging_period_is_taken_ahead_of_newer_normal_items() -> (
    None
):
    acks = Acks()
    scheduler = Scheduler(1, 10_000, 1, FairOrder(aging_s=0.1))
    add_job(scheduler, acks, "low", 1, Priority.LOW)
    time.sleep(0.25)  # two aging periods: low -> normal -> high
    add_job(scheduler, acks, "normal", 3)
    assert jobs_of(scheduler.next_batch()) == ["low"]


def test_a_low_item_that_has_not_aged_waits_behind_newer_normal_items() -> None:
    acks = Acks()
    scheduler = Scheduler(1, 10_000, 1, FairOrder(aging_s=60))
    add_job(scheduler, acks, "low", 1, Priority.LOW)
    add_job(scheduler, acks, "normal", 3)
    assert [jobs_of(scheduler.next_batch()) for _ in range(4)] == [["normal"]] * 3 + [["low"]]


def test_a_released_deliverys_items_leave_the_pool() -> None:
    acks = Acks()
    scheduler = Scheduler(
        max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1, order=FairOrder()
    )
    released = add_job(scheduler, acks, "gone", 3)
    kept = add_job(scheduler, acks, "kept", 3)
    assert scheduler.pending() == 6
    assert scheduler.release(["tag-gone"]) == (["tag-gone"], 3)
    assert scheduler.pending() == 3
    assert [i.status for i in released] == [ItemStatus.RELEASED] * 3
    assert [i.status for i in kept] == [ItemStatus.WAITING] * 3
    served = (scheduler.next_batch() or []) + (scheduler.next_batch() or [])
    assert {i.job_id for i in served} == {"kept"}
    assert scheduler.pending() == 0


def test_a_running_item_of_a_released_delivery_is_not_put_back() -> None:
    acks = Acks()
    scheduler = Scheduler(max_batch_size=2, max_batch_tokens=10_000, max_wait_ms=1)
    add_job(scheduler, acks, "a", 2)
    running = scheduler.next_batch()
    assert running is not None
    assert [i.status for i in running] == [ItemStatus.RUNNING] * 2
    scheduler.release()
    scheduler.retry_later(running)
    assert scheduler.pending() == 0
    assert [i.status for i in running] == [ItemStatus.RELEASED] * 2


def test_a_deferred_retry_is_counted_as_pending_and_marked_deferred() -> None:
    scheduler = Scheduler(max_batch_size=1, max_batch_tokens=10_000, max_wait_ms=1)
    add_job(scheduler, Acks(), "a", 1)
    (item,) = scheduler.next_batch() or []
    item.not_before = time.monotonic() + 60
    scheduler.retry_later([item])
    assert (scheduler.pending(), item.status) == (1, ItemStatus.DEFERRED)
    assert scheduler.take(1, lambda _: True, wait=False) == []  # it waits out its backoff


@pytest.mark.parametrize("priority", [Priority.HIGH, Priority.NORMAL, Priority.LOW])
def test_a_stream_of_one_item_urgent_jobs_never_holds_a_buffered_message_forever(
    priority: Priority,
) -> None:
    scheduler = Scheduler(8, 10**9, 1, FairOrder(aging_s=0.01))
    params = GenerationParams()
    acked: list[str] = []

    def deliver(job: str, n: int, level: Priority) -> None:
        delivery = Delivery(f"tag-{job}", job, n, lambda: acked.append(job), priority=level)
        items = [WorkItem(index=i, custom_id=str(i), prompt="p", params=params) for i in range(n)]
        scheduler.add(delivery, [Prepared(job, 0.0, item, [1], 4) for item in items])

    deliver("big", 16, priority)
    newcomers = 0
    for _ in range(200):  # single /v1/completions requests keep the pool full
        while scheduler.pending() < 16:
            newcomers += 1
            deliver(f"one-{newcomers}", 1, Priority.HIGH)
        batch = scheduler.next_batch()
        assert batch is not None
        time.sleep(0.001)
        scheduler.complete(batch)
        if "big" in acked:
            break
    assert "big" in acked
