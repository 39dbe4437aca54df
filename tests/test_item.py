"""A worker-side item: its retry policy (tries in all, doubling backoff) and its identity."""

from __future__ import annotations

from genq.schema import GenerationParams, Priority, WorkItem
from genq.worker.engines.base import Prepared, batch_key
from genq.worker.item import Delivery, Item, ItemStatus


def item(**params: object) -> Item:
    p = GenerationParams.model_validate({"max_new_tokens": 8, **params})
    prepared = Prepared("job", 0.0, WorkItem(index=3, custom_id="3", prompt="x", params=p), [1], 8)
    return Item(prepared, Delivery("tag", "job", 1, lambda: None))


def test_retry_backoff_doubles_per_attempt() -> None:
    it = item()
    delays = []
    for attempts in (1, 2, 3, 4):
        it.attempts = attempts
        delays.append(it.next_retry_delay(0.5))
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_retryable_turns_false_at_max_attempts() -> None:
    it = item()
    answers = []
    for attempts in (1, 2, 3):
        it.attempts = attempts
        answers.append(it.retryable(max_attempts=3))
    assert answers == [True, True, False]


def test_a_try_redis_could_not_count_still_counts_as_one() -> None:
    it = item()
    assert it.attempts == 0
    assert it.next_retry_delay(1.0) == 1.0
    assert not it.retryable(max_attempts=1)


def test_a_new_item_waits_with_its_batch_key_and_normal_priority() -> None:
    it = item(temperature=0.5)
    assert (it.status, it.priority, it.key) == (
        ItemStatus.WAITING,
        Priority.NORMAL,
        batch_key(it.prepared.params),
    )
    assert (it.job_id, it.index, it.rows) == ("job", 3, 1)


def test_two_items_of_the_same_prompt_are_told_apart() -> None:
    a, b = item(), item()
    assert a != b
    assert len({a, b, a}) == 2
