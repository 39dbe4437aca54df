"""Every engine ends its rows through base.check_stop, and only where it says."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest
from conftest import PROMPTS

import genq.worker.engines.ct2 as ct2_module
import genq.worker.engines.hf as hf_module
import genq.worker.engines.hf_continuous as continuous_module
from genq.schema import FinishReason, GenerationParams, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared
from genq.worker.engines.ct2 import CT2Engine
from genq.worker.engines.hf import HFEngine


def stop_after_two(
    generated: Sequence[int],
    *,
    eos_id: int | None,
    stops: Sequence[str],
    max_new_tokens: int,
    decode: Callable[[list[int]], str],
) -> FinishReason | None:
    return "eos" if len(generated) >= 2 else None


def batch(engine: HFEngine | CT2Engine) -> list[Prepared]:
    params = GenerationParams(max_new_tokens=12, do_sample=False)
    return [
        Prepared("j", 0.0, WorkItem(index=i, custom_id=str(i), prompt=t, params=params), ids, 12)
        for i, t in enumerate(PROMPTS[:4])
        for ids in [engine.encode(t)]
    ]


def hf_static(tiny_model: Path, cache: Path) -> list[Generation]:
    engine = HFEngine.load(Settings(model=str(tiny_model), device="cpu"))
    return engine.generate(batch(engine))


def hf_continuous(tiny_model: Path, cache: Path) -> list[Generation]:
    engine = HFEngine.load(Settings(model=str(tiny_model), device="cpu"))
    decoder = engine.decoder()
    items = batch(engine)
    done = dict(decoder.add(items))
    while decoder.active_rows:
        done.update(decoder.step())
    return [done[p] for p in items]


def ct2(tiny_model: Path, cache: Path) -> list[Generation]:
    settings = Settings(
        model=str(tiny_model),
        device="cpu",
        engine="ct2",
        ct2_compute_type="float32",
        cache_dir=str(cache),
    )
    engine = CT2Engine.load(settings)
    return engine.generate(batch(engine))


@pytest.mark.parametrize(
    ("module", "run"),
    [(hf_module, hf_static), (continuous_module, hf_continuous), (ct2_module, ct2)],
    ids=["hf", "hf-continuous", "ct2"],
)
def test_every_engine_ends_rows_where_check_stop_says(
    module: ModuleType,
    run: Callable[[Path, Path], list[Generation]],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "check_stop", stop_after_two)
    generations = run(tiny_model, tmp_path)
    assert [g.finish_reasons for g in generations] == [["eos"]] * 4
    assert [g.token_counts for g in generations] == [[2]] * 4
