"""Continuous batching on the real tiny GPT-2: rows join and leave, outputs stay exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, one_at_a_time

from genq.schema import GenerationParams, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared
from genq.worker.engines.hf import HFEngine
from genq.worker.engines.hf_continuous import ContinuousDecoder


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine.load(Settings(model=str(tiny_model), device="cpu"))


def item(engine: HFEngine, index: int, prompt: str, **params: object) -> Prepared:
    p = GenerationParams.model_validate({"max_new_tokens": 12, "do_sample": False, **params})
    assert p.max_new_tokens is not None
    work = WorkItem(index=index, custom_id=str(index), prompt=prompt, params=p)
    return Prepared("job", 0.0, work, engine.encode(prompt), p.max_new_tokens)


def reference(engine: HFEngine, prepared: Prepared, **kwargs: object) -> list[int]:
    return one_at_a_time(engine, prepared.prompt_ids, prepared.max_new_tokens, **kwargs)


def run(decoder: ContinuousDecoder, waves: list[list[Prepared]]) -> dict[int, Generation]:
    """Add each wave after one decode step, then step until every row has finished."""
    done: dict[int, Generation] = {}
    for wave in waves:
        for prepared, generation in decoder.add(wave) + decoder.step():
            done[prepared.item.index] = generation
    while decoder.active_rows:
        for prepared, generation in decoder.step():
            done[prepared.item.index] = generation
    return done


def test_rows_joining_a_running_batch_match_one_at_a_time_greedy(engine: HFEngine) -> None:
    items = [item(engine, i, p, max_new_tokens=4 + 3 * i) for i, p in enumerate(PROMPTS)]
    done = run(ContinuousDecoder(engine), [items[:3], items[3:5], items[5:]])
    assert sorted(done) == list(range(len(PROMPTS)))
    for prepared in items:
        expected = reference(engine, prepared)
        generation = done[prepared.item.index]
        assert generation.token_counts == [len(expected)]
        assert generation.outputs == [engine.tokenizer.decode(expected, skip_special_tokens=True)]
        assert generation.finish_reasons == ["length"]


def test_a_finished_row_leaves_and_the_batch_shrinks(engine: HFEngine) -> None:
    decoder = ContinuousDecoder(engine)
    short = item(engine, 0, PROMPTS[0], max_new_tokens=2)
    long = item(engine, 1, PROMPTS[3], max_new_tokens=10)
    decoder.add([short, long])
    finished = decoder.step()
    assert [p.item.index for p, _ in finished] == [0]
    assert decoder.active_rows == 1


def test_rows_with_different_params_share_the_batch(engine: HFEngine) -> None:
    greedy = item(engine, 0, PROMPTS[0])
    sampled = item(
        engine, 1, PROMPTS[1], do_sample=True, temperature=0.7, top_k=5, num_return_sequences=3
    )
    penalised = item(engine, 2, PROMPTS[2], repetition_penalty=1.3)
    done = run(ContinuousDecoder(engine), [[greedy, sampled, penalised]])
    assert done[0].outputs == [
        engine.tokenizer.decode(reference(engine, greedy), skip_special_tokens=True)
    ]
    assert len(done[1].outputs) == 3
    assert done[1].completion_tokens == 36
    penalised_ids = reference(engine, penalised, repetition_penalty=1.3)
    assert done[2].token_counts == [len(penalised_ids)]
    assert done[2].outputs == [engine.tokenizer.decode(penalised_ids, skip_special_tokens=True)]


def test_seeded_sampling_does_not_depend_on_neighbours(engine: HFEngine) -> None:
    seeded = item(engine, 0, PROMPTS[0], do_sample=True, seed=42, temperature=1.5)
    alone = run(ContinuousDecoder(engine), [[seeded]])[0].outputs
    crowd = [item(engine, i, PROMPTS[i], do_sample=True) for i in range(1, 6)]
    together = run(ContinuousDecoder(engine), [[*crowd[:2], seeded], crowd[2:]])[0].outputs
    assert alone == together


def test_stop_strings_end_a_row(engine: HFEngine) -> None:
    full = run(ContinuousDecoder(engine), [[item(engine, 0, PROMPTS[0], max_new_tokens=20)]])
    text = full[0].outputs[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    done = run(
        ContinuousDecoder(engine), [[item(engine, 0, PROMPTS[0], max_new_tokens=20, stop=[stop])]]
    )
    assert done[0].finish_reasons == ["stop"]
    assert done[0].outputs == [text[: text.find(stop)]]


def test_cancelled_jobs_leave_the_batch(engine: HFEngine) -> None:
    decoder = ContinuousDecoder(engine)
    keep = item(engine, 0, PROMPTS[0])
    gone = Prepared(
        "other-job", 0.0, item(engine, 1, PROMPTS[1]).item, engine.encode(PROMPTS[1]), 12
    )
    decoder.add([keep, gone])
    assert [p.job_id for p in decoder.drop({"other-job"})] == ["other-job"]
    assert decoder.active_rows == 1
    assert decoder.clear() == [keep]
    assert decoder.active_rows == 0


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 50, 0.95), (0.7, 5, 1.0), (1.3, 0, 0.9), (1.0, 0, 1.0)],
)
def test_sampling_distribution_equals_hf_warpers(
    temperature: float, top_k: int, top_p: float
) -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from genq.worker.engines.hf_continuous import candidate_probs

    scores = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)) * 3
    expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    expected = expected.softmax(-1)
    n = scores.shape[0]
    probs, indices = candidate_probs(
        scores, torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p)
    )
    got = torch.zeros_like(scores).scatter(1, indices, probs)
    torch.testing.assert_close(got, expected)
