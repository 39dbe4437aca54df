"""The ct2 engine: the same checkpoint through CTranslate2, converted once and cached."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from conftest import PROMPTS

from genq.schema import GenerationParams, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Prepared
from genq.worker.engines.ct2 import CT2Engine, conversion_key
from genq.worker.engines.hf import HFEngine


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("genq-cache")


@pytest.fixture(scope="module")
def ct2(tiny_model: Path, cache_dir: Path) -> CT2Engine:
    settings = Settings(
        model=str(tiny_model),
        device="cpu",
        engine="ct2",
        ct2_compute_type="float32",
        cache_dir=str(cache_dir),
    )
    return CT2Engine.load(settings)


def prepare(engine: HFEngine | CT2Engine, **params: object) -> list[Prepared]:
    p = GenerationParams.model_validate({"max_new_tokens": 12, "do_sample": False, **params})
    return [
        Prepared(
            "j", 0.0, WorkItem(index=i, custom_id=str(i), prompt=t, params=p), engine.encode(t), 12
        )
        for i, t in enumerate(PROMPTS)
    ]


def test_float32_greedy_equals_hf_greedy_token_for_token(ct2: CT2Engine, tiny_model: Path) -> None:
    hf = HFEngine.load(Settings(model=str(tiny_model), device="cpu"))
    expected = hf.generate(prepare(hf))
    got = ct2.generate(prepare(ct2))
    assert [g.outputs for g in got] == [g.outputs for g in expected]
    assert [g.token_counts for g in got] == [g.token_counts for g in expected]
    assert [g.finish_reasons for g in got] == [g.finish_reasons for g in expected]


def test_conversion_is_cached(ct2: CT2Engine, tiny_model: Path, cache_dir: Path) -> None:
    converted = cache_dir / "ct2" / conversion_key(tiny_model) / "model.bin"
    mtime = converted.stat().st_mtime_ns
    settings = Settings(model=str(tiny_model), device="cpu", engine="ct2", cache_dir=str(cache_dir))
    CT2Engine.load(settings)
    assert converted.stat().st_mtime_ns == mtime


def test_rows_stop_alone_and_at_stop_strings(ct2: CT2Engine) -> None:
    batch = prepare(ct2)
    batch[0] = Prepared("j", 0.0, batch[0].item, batch[0].prompt_ids, 3)
    generations = ct2.generate(batch)
    assert generations[0].completion_tokens == 3
    assert generations[1].completion_tokens == 12
    full = generations[1].outputs[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip()
    stopped = ct2.generate(prepare(ct2, stop=[stop]))[1]
    assert stopped.finish_reasons == ["stop"]
    assert stopped.outputs == [full[: full.find(stop)]]


def test_int8_sampling_returns_every_sequence(tiny_model: Path, cache_dir: Path) -> None:
    settings = Settings(model=str(tiny_model), device="cpu", engine="ct2", cache_dir=str(cache_dir))
    engine = CT2Engine.load(settings)
    assert "int8" in engine.device
    generations = engine.generate(prepare(engine, do_sample=True, num_return_sequences=2))
    assert all(len(g.outputs) == 2 and g.completion_tokens == 24 for g in generations)


def test_the_step_callback_cannot_reach_the_engine(ct2: CT2Engine) -> None:
    # CTranslate2 drops the callback on its own thread; a callback that keeps the engine (and
    # so the Generator) alive can make that thread destroy the Generator, which aborts the
    # process (CI saw it once).
    seen: list[object] = []
    real = ct2.generator

    class Spy:
        def generate_batch(self, *args: object, **kwargs: object) -> object:
            seen.append(kwargs["callback"])
            return real.generate_batch(*args, **kwargs)

    ct2.generator = Spy()  # type: ignore[assignment]
    try:
        ct2.generate(prepare(ct2))
    finally:
        ct2.generator = real
    assert seen
    for callback in seen:
        assert not reaches(callback, {id(ct2), id(real)})


def reaches(start: object, targets: set[int], limit: int = 50_000) -> bool:
    """Whether any object in ``targets`` (by id) is reachable from ``start`` by references."""
    pending, visited = [start], set()
    while pending and len(visited) < limit:
        obj = pending.pop()
        if id(obj) in targets:
            return True
        if id(obj) in visited or isinstance(obj, type):
            continue
        visited.add(id(obj))
        pending.extend(gc.get_referents(obj))
    return False
