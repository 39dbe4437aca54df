"""The null engine: empty outputs after a fixed cost per batch (GENQ_NULL_BATCH_MS)."""

from __future__ import annotations

import time

import pytest

from genq.schema import GenerationParams, WorkItem
from genq.settings import Settings
from genq.worker.engines import load_engine
from genq.worker.engines.base import Prepared
from genq.worker.engines.null import NullEngine

COST_MS = 200


def batch(size: int) -> list[Prepared]:
    params = GenerationParams(max_new_tokens=4, num_return_sequences=2)
    return [
        Prepared(
            "job", 0.0, WorkItem(index=i, custom_id=str(i), prompt="hi", params=params), [1], 4
        )
        for i in range(size)
    ]


@pytest.mark.parametrize("size", [1, 10])
def test_a_batch_takes_the_configured_cost_whatever_its_size(size: int) -> None:
    engine = NullEngine.load(Settings(engine="null", null_batch_ms=COST_MS))
    started = time.monotonic()
    generations = engine.generate(batch(size))
    elapsed = time.monotonic() - started
    assert COST_MS / 1000 <= elapsed < COST_MS / 1000 + 1
    assert [g.outputs for g in generations] == [["", ""]] * size
    assert all(g.finish_reasons == ["length", "length"] for g in generations)


def test_load_engine_gives_the_null_engine_its_configured_cost() -> None:
    engine = load_engine(Settings(engine="null", null_batch_ms=COST_MS))
    assert isinstance(engine, NullEngine)
    started = time.monotonic()
    engine.generate(batch(3))
    assert time.monotonic() - started >= COST_MS / 1000


def test_without_a_cost_a_batch_returns_at_once() -> None:
    engine = NullEngine.load(Settings(engine="null"))
    started = time.monotonic()
    engine.generate(batch(10))
    assert time.monotonic() - started < 0.5
