"""The fault injector's decoder: faults on join, the rest of the Decoder passed through."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from genq.schema import GenerationParams, WorkItem
from genq.worker.engines.base import Generation, Prepared
from genq.worker.engines.faults import FaultPlan, FaultyEngine, InjectedFault
from genq.worker.engines.null import NullEngine


class OneStepDecoder:
    """A decoder whose rows all finish at the next step (no model)."""

    def __init__(self) -> None:
        self.items: list[Prepared] = []

    @property
    def active_rows(self) -> int:
        return sum(p.rows for p in self.items)

    def projected_tokens(self, joining: Sequence[Prepared] = ()) -> int:
        return 100 * (self.active_rows + sum(p.rows for p in joining))

    def add(self, items: Sequence[Prepared]) -> list[tuple[Prepared, Generation]]:
        self.items += items
        return []

    def step(self) -> list[tuple[Prepared, Generation]]:
        done, self.items = self.items, []
        return [(p, Generation([""], ["length"], 1, [1])) for p in done]

    def drop(self, job_ids: set[str]) -> list[Prepared]:
        dropped = [p for p in self.items if p.job_id in job_ids]
        self.items = [p for p in self.items if p.job_id not in job_ids]
        return dropped

    def clear(self) -> list[Prepared]:
        cleared, self.items = self.items, []
        return cleared


class ContinuousNull(NullEngine):
    def decoder(self) -> OneStepDecoder:
        return OneStepDecoder()


def prepared(job_id: str, prompt: str) -> Prepared:
    params = GenerationParams(max_new_tokens=4)
    return Prepared(
        job_id, 0.0, WorkItem(index=0, custom_id="0", prompt=prompt, params=params), [1], 4
    )


def test_the_faulty_decoder_passes_every_decoder_call_through() -> None:
    decoder = FaultyEngine(ContinuousNull(), FaultPlan()).decoder()
    assert decoder is not None
    keep, gone, later = prepared("a", "x"), prepared("b", "y"), prepared("a", "z")
    assert decoder.add([keep, gone]) == []
    assert decoder.active_rows == 2
    assert decoder.projected_tokens([later]) == 300
    assert decoder.drop({"b"}) == [gone]
    assert [p for p, _ in decoder.step()] == [keep]
    decoder.add([later])
    assert decoder.clear() == [later]
    assert decoder.active_rows == 0


def test_a_marked_item_joining_the_faulty_decoder_raises() -> None:
    decoder = FaultyEngine(ContinuousNull(), FaultPlan(raise_on=["boom"])).decoder()
    assert decoder is not None
    with pytest.raises(InjectedFault):
        decoder.add([prepared("a", "boom")])
    assert decoder.active_rows == 0


def test_an_engine_without_a_decoder_stays_without_one_when_faulty() -> None:
    assert FaultyEngine(NullEngine(), FaultPlan()).decoder() is None
