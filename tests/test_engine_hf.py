"""The hf engine on a real (tiny, random-weight) GPT-2: batching changes nothing under greedy."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROMPTS, one_at_a_time

from genq.schema import GenerationParams, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Prepared
from genq.worker.engines.hf import HFEngine


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine.load(Settings(model=str(tiny_model), device="cpu"))


def prepare(engine: HFEngine, prompts: list[str], **params: object) -> list[Prepared]:
    p = GenerationParams.model_validate({"max_new_tokens": 12, "do_sample": False, **params})
    out = []
    for i, prompt in enumerate(prompts):
        item = WorkItem(index=i, custom_id=str(i), prompt=prompt, params=p)
        assert p.max_new_tokens is not None
        out.append(Prepared("job", 0.0, item, engine.encode(prompt), p.max_new_tokens))
    return out


def test_batched_greedy_equals_one_at_a_time_generate(engine: HFEngine) -> None:
    batch = prepare(engine, PROMPTS)
    batched = engine.generate(batch)
    for prepared, generation in zip(batch, batched, strict=True):
        reference = one_at_a_time(engine, prepared.prompt_ids, 12)
        expected = engine.tokenizer.decode(reference, skip_special_tokens=True)
        assert generation.outputs == [expected]
        assert generation.token_counts == [len(reference)]


def test_rows_stop_at_their_own_max_new_tokens(engine: HFEngine) -> None:
    batch = prepare(engine, PROMPTS[:2])
    batch[0] = Prepared("job", 0.0, batch[0].item, batch[0].prompt_ids, 3)
    first, second = engine.generate(batch)
    assert (first.completion_tokens, first.finish_reasons) == (3, ["length"])
    assert (second.completion_tokens, second.finish_reasons) == (12, ["length"])
    alone = engine.generate([batch[0]])[0]
    assert alone.outputs == first.outputs


def test_stop_string_ends_the_row_and_is_not_included(engine: HFEngine) -> None:
    full = engine.generate(prepare(engine, [PROMPTS[0]], max_new_tokens=20))[0].outputs[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), "the random model produced a usable stop string"
    generation = engine.generate(prepare(engine, [PROMPTS[0]], max_new_tokens=20, stop=[stop]))[0]
    assert generation.finish_reasons == ["stop"]
    assert generation.outputs == [full[: full.find(stop)]]
    assert generation.completion_tokens < 20


def test_num_return_sequences_gives_that_many_outputs(engine: HFEngine) -> None:
    generations = engine.generate(
        prepare(engine, PROMPTS[:2], do_sample=True, num_return_sequences=3)
    )
    assert [len(g.outputs) for g in generations] == [3, 3]
    assert all(g.completion_tokens == 36 for g in generations)


def test_seeded_sampling_is_reproducible(engine: HFEngine) -> None:
    batch = prepare(engine, PROMPTS[:3], do_sample=True, seed=7, temperature=1.5)
    assert [g.outputs for g in engine.generate(batch)] == [
        g.outputs for g in engine.generate(batch)
    ]


def test_context_of_the_model_is_known(engine: HFEngine) -> None:
    assert engine.max_context == 128
