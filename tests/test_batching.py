"""The batching policy: compatible groups, length sorting, count and token budgets."""

from __future__ import annotations

from genq.schema import GenerationParams, WorkItem
from genq.worker.batching import batch_cost, plan_batches
from genq.worker.engines.base import Prepared


def prepared(index: int, length: int, new: int = 8, **params: object) -> Prepared:
    p = GenerationParams.model_validate({"max_new_tokens": new, **params})
    item = WorkItem(index=index, custom_id=str(index), prompt="x", params=p)
    return Prepared("job", 0.0, item, list(range(length)), new)


def test_items_with_different_sampling_params_never_share_a_batch() -> None:
    items = [prepared(0, 5), prepared(1, 5, temperature=0.5), prepared(2, 5, do_sample=False)]
    batches = plan_batches(items, max_batch_size=8, max_batch_tokens=10_000)
    assert sorted(len(b) for b in batches) == [1, 1, 1]


def test_max_new_tokens_and_stop_may_differ_within_a_batch() -> None:
    items = [prepared(0, 5, new=4), prepared(1, 5, new=30, stop=["."])]
    assert len(plan_batches(items, 8, 10_000)) == 1


def test_greedy_items_batch_together_whatever_their_sampling_fields() -> None:
    items = [prepared(0, 5, do_sample=False, top_k=3), prepared(1, 5, do_sample=False, top_k=9)]
    assert len(plan_batches(items, 8, 10_000)) == 1


def test_batches_are_sorted_by_length_and_cut_by_count() -> None:
    items = [prepared(i, length) for i, length in enumerate([9, 1, 7, 3, 5, 2, 8])]
    batches = plan_batches(items, max_batch_size=3, max_batch_tokens=10_000)
    assert [[len(p.prompt_ids) for p in b] for b in batches] == [[1, 2, 3], [5, 7, 8], [9]]


def test_num_return_sequences_count_as_rows() -> None:
    items = [prepared(i, 4, num_return_sequences=3) for i in range(4)]
    batches = plan_batches(items, max_batch_size=6, max_batch_tokens=10_000)
    assert [len(b) for b in batches] == [2, 2]


def test_token_budget_bounds_a_batch_of_long_prompts() -> None:
    items = [prepared(i, 100, new=28) for i in range(10)]
    batches = plan_batches(items, max_batch_size=64, max_batch_tokens=512)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(batch_cost(b) <= 512 for b in batches)


def test_an_item_over_the_budget_still_runs_alone() -> None:
    batches = plan_batches([prepared(0, 1000)], max_batch_size=4, max_batch_tokens=64)
    assert [len(b) for b in batches] == [1]
