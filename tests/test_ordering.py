"""Ordering policies: FIFO by arrival; fair by aged priority, then jobs in turn, then arrival."""

from __future__ import annotations

import pytest

from genq.schema import GenerationParams, Priority, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Prepared
from genq.worker.item import Delivery, Item
from genq.worker.ordering import FairOrder, FifoOrder, OrderingPolicy, policy_for

_params = GenerationParams.model_validate({"max_new_tokens": 8})


def arrive(
    order: OrderingPolicy, job: str, seq: int, priority: Priority = Priority.NORMAL, at: float = 0.0
) -> Item:
    work = WorkItem(index=seq, custom_id=str(seq), prompt="x", params=_params)
    delivery = Delivery(f"tag-{job}", job, 1, lambda: None, priority=priority)
    item = Item(Prepared(job, 0.0, work, [1], 8), delivery, seq, at, priority)
    order.admit(item)
    return item


def served(order: OrderingPolicy, items: list[Item], now: float = 0.0) -> list[str]:
    return [i.job_id for i in sorted(items, key=lambda i: order.key(i, now))]


def test_fifo_order_is_arrival_order_whatever_the_priority() -> None:
    order = FifoOrder()
    items = [arrive(order, "a", 0, Priority.LOW), arrive(order, "b", 1, Priority.HIGH)]
    assert served(order, items) == ["a", "b"]


def test_fair_order_serves_the_more_urgent_priority_first() -> None:
    order = FairOrder(aging_s=60)
    items = [
        arrive(order, "low", 0, Priority.LOW),
        arrive(order, "normal", 1),
        arrive(order, "high", 2, Priority.HIGH),
    ]
    assert served(order, items) == ["high", "normal", "low"]


@pytest.mark.parametrize(
    ("waited_s", "rank"), [(0.0, 2), (1.9, 2), (2.0, 1), (3.9, 1), (4.0, 0), (100.0, 0)]
)
def test_fair_order_moves_an_item_up_one_level_per_aging_period(waited_s: float, rank: int) -> None:
    order = FairOrder(aging_s=2.0)
    low = arrive(order, "low", 0, Priority.LOW, at=10.0)
    assert order.rank(low, now=10.0 + waited_s) == rank


def test_fair_order_alternates_jobs_from_the_latest_turn_served() -> None:
    order = FairOrder()
    big = [arrive(order, "big", seq) for seq in range(6)]
    order.taken(big[:2])  # turns 0 and 1 ran
    small = [arrive(order, "small", seq) for seq in range(6, 9)]
    assert [i.turn for i in small] == [1, 2, 3]  # starts at the turn served, not at 0
    assert served(order, big[2:] + small) == ["small", "big", "small", "big", "small", "big", "big"]


def test_fair_order_forgets_jobs_whose_turns_are_all_served() -> None:
    order = FairOrder()
    once = arrive(order, "once", 0)
    busy = [arrive(order, "busy", seq) for seq in range(1, 6)]
    order.taken([once, *busy])  # turns up to 4 ran
    assert set(order._next_turn) == {"busy"}  # the pool's bookkeeping does not grow with jobs
    back = arrive(order, "once", 6)
    assert back.turn == 4  # the turn served: neither behind nor ahead of the jobs waiting


@pytest.mark.parametrize(("name", "kind"), [("fair", FairOrder), ("fifo", FifoOrder)])
def test_the_policy_is_the_one_genq_scheduling_names(name: str, kind: type) -> None:
    policy = policy_for(Settings(scheduling=name, priority_aging_s=5.0))
    assert isinstance(policy, kind)
    if isinstance(policy, FairOrder):
        assert policy.aging_s == 5.0
