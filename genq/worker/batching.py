"""The batching policy: which items may share a forward pass, and where batches are cut.

Items share a batch only when their sampling parameters are the same (one generation config per
``generate`` call); ``max_new_tokens`` and ``stop`` may differ, since each row stops on its own.
Within a group, items are sorted by prompt length so that left padding wastes little, and each
batch is bounded by a count of sequences and by a budget of padded tokens (memory stays bounded
when prompts are long).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

# The grouping rule (engines.base.batch_key) lives with Prepared, which works it out once per
# item.
from genq.worker.engines.base import Prepared


def batch_cost(items: Sequence[Prepared]) -> int:
    """Padded tokens the batch holds at its last step: rows x (longest prompt + most new)."""
    rows = sum(p.rows for p in items)
    longest = max(len(p.prompt_ids) for p in items)
    most_new = max(p.max_new_tokens for p in items)
    return rows * (longest + most_new)


def plan_batches(
    items: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
) -> list[list[Prepared]]:
    """Cut ``items`` into batches; an item too big for the budgets still runs, alone."""
    groups: dict[Hashable, list[Prepared]] = defaultdict(list)
    for item in items:
        groups[item.batch_key].append(item)
    batches: list[list[Prepared]] = []
    for group in groups.values():
        group.sort(key=lambda p: len(p.prompt_ids))
        current: list[Prepared] = []
        rows = longest = most_new = 0
        for item in group:
            c_rows = rows + item.rows
            c_longest = max(longest, len(item.prompt_ids))
            c_most_new = max(most_new, item.max_new_tokens)
            too_big = (
                c_rows > max_batch_size or c_rows * (c_longest + c_most_new) > max_batch_tokens
            )
            if current and too_big:
                batches.append(current)
                current = []
                c_rows, c_longest, c_most_new = item.rows, len(item.prompt_ids), item.max_new_tokens
            current.append(item)
            rows, longest, most_new = c_rows, c_longest, c_most_new
        if current:
            batches.append(current)
    return batches
