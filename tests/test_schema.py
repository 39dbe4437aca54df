"""The job contract: defaults, validation messages, overrides, statuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genq.schema import (
    TERMINAL,
    UNFINISHED,
    GenerationParams,
    ItemResult,
    JobItem,
    JobSpec,
    JobStatus,
    WorkChunk,
)
from genq.settings import CHUNK_MAX_BYTES, DEFAULT_MAX_NEW_TOKENS


def test_defaults_follow_the_seed_tutorial_sampling() -> None:
    params = GenerationParams()
    assert params.do_sample is True
    assert (params.top_k, params.top_p, params.temperature) == (50, 0.95, 1.0)
    assert params.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert params.num_return_sequences == 1


def test_max_length_is_accepted_instead_of_max_new_tokens() -> None:
    params = GenerationParams(max_length=100)
    assert params.max_length == 100
    assert params.max_new_tokens is None


def test_both_length_limits_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="not both"):
        GenerationParams(max_length=100, max_new_tokens=10)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", -1),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("num_return_sequences", 0),
        ("num_return_sequences", 1000),
        ("repetition_penalty", 0),
        ("seed", -5),
        ("stop", [""]),
    ],
)
def test_out_of_range_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        GenerationParams.model_validate({field: value})


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        GenerationParams.model_validate({"temprature": 0.7})


def test_a_single_stop_string_becomes_a_list() -> None:
    assert GenerationParams(stop="\n").stop == ("\n",)  # type: ignore[arg-type]


def test_item_overrides_merge_over_job_defaults() -> None:
    job = GenerationParams(max_new_tokens=32, temperature=0.7)
    merged = job.with_overrides({"top_k": 5})
    assert (merged.max_new_tokens, merged.temperature, merged.top_k) == (32, 0.7, 5)


def test_item_max_length_replaces_job_max_new_tokens() -> None:
    merged = GenerationParams(max_new_tokens=32).with_overrides({"max_length": 80})
    assert (merged.max_length, merged.max_new_tokens) == (80, None)


def test_duplicate_custom_ids_are_refused() -> None:
    items = [JobItem(prompt="a", custom_id="x"), JobItem(prompt="b", custom_id="x")]
    with pytest.raises(ValidationError, match="duplicate custom_id 'x'"):
        JobSpec(items=items)


def test_default_custom_id_is_the_index_and_counts_for_uniqueness() -> None:
    with pytest.raises(ValidationError, match="duplicate custom_id '1'"):
        JobSpec(
            items=[JobItem(prompt="a"), JobItem(prompt="b"), JobItem(prompt="c", custom_id="1")]
        )


def test_messages_carry_only_what_differs_and_workers_merge_the_jobs_defaults() -> None:
    defaults = GenerationParams(max_new_tokens=7, stop=("###",))
    spec = JobSpec(
        items=[JobItem(prompt="a"), JobItem(prompt="b", custom_id="b", params={"top_k": 3})],
        params=defaults,
    )
    (message,) = spec.messages("j", 1.0, max_items=16)
    assert "max_new_tokens" not in message and "###" not in message  # defaults: job record
    work = [item.resolve(defaults) for item in WorkChunk.model_validate_json(message).items]
    assert [(w.index, w.custom_id) for w in work] == [(0, "0"), (1, "b")]
    assert (work[1].params.top_k, work[1].params.max_new_tokens) == (3, 7)
    assert work[1].params.stop == ("###",)
    assert (work[0].overrides, work[1].overrides) == (None, {"top_k": 3})


def test_messages_are_cut_by_item_count_and_by_bytes() -> None:
    spec = JobSpec(items=[JobItem(prompt="p" * 60_000) for _ in range(40)])
    messages = spec.messages("j", 1.0, max_items=16)
    chunks = [WorkChunk.model_validate_json(m) for m in messages]
    assert [i.index for c in chunks for i in c.items] == list(range(40))
    assert all(len(m) <= CHUNK_MAX_BYTES + 200 for m in messages)
    assert len(chunks) == 3  # 17 items of 60 KB make a MiB: bytes cut before the count
    assert len(JobSpec(items=[JobItem(prompt="x")] * 40).messages("j", 1.0, 16)) == 3


def test_messages_round_trip_through_json() -> None:
    spec = JobSpec(items=[JobItem(prompt='人工智能 🚀 "q"\n', custom_id="c\\1")])
    (message,) = spec.messages("j1", 1.25, max_items=16)
    chunk = WorkChunk.model_validate_json(message)
    assert (chunk.job_id, chunk.enqueued_at) == ("j1", 1.25)
    assert chunk.items[0].prompt == '人工智能 🚀 "q"\n'
    assert chunk.items[0].custom_id == "c\\1"
    result = ItemResult(custom_id="0", index=0, prompt="p", outputs=["o"], params={"top_k": 2})
    assert ItemResult.model_validate_json(result.model_dump_json()) == result


def test_terminal_statuses() -> None:
    assert {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.EXPIRED,
    } == TERMINAL
    assert set(JobStatus) == TERMINAL | UNFINISHED
    assert not TERMINAL & UNFINISHED


def test_several_sequences_need_sampling() -> None:
    with pytest.raises(ValidationError, match="needs sampling"):
        GenerationParams(do_sample=False, num_return_sequences=2)


def test_a_message_with_an_unsafe_job_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="job_id"):
        WorkChunk.model_validate_json('{"job_id": "a b", "enqueued_at": 0, "items": []}')
