"""The job contract: defaults, validation messages, overrides, statuses."""

from __future__ import annotations

from typing import Any

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
from genq.text import shown


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
    assert "max_new_tokens" not in message  # defaults: in the job record
    assert "###" not in message
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


# --- strict types, finite numbers, stop strings, valid Unicode ---------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_new_tokens", True, "valid integer"),
        ("max_new_tokens", "12", "valid integer"),
        ("max_new_tokens", 12.0, "valid integer"),
        ("max_length", False, "valid integer"),
        ("top_k", "5", "valid integer"),
        ("seed", True, "valid integer"),
        ("seed", 1.5, "valid integer"),
        ("num_return_sequences", [2], "valid integer"),
        ("temperature", True, "valid number"),
        ("temperature", "0.7", "valid number"),
        ("top_p", None, "valid number"),
        ("repetition_penalty", "1", "valid number"),
        ("do_sample", 1, "valid boolean"),
        ("do_sample", "true", "valid boolean"),
        ("truncate", 0, "valid boolean"),
        ("truncate", "yes", "valid boolean"),
    ],
)
def test_no_value_is_coerced_across_types(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected) as e:
        GenerationParams.model_validate({field: value})
    assert e.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_floats_must_be_finite(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        GenerationParams.model_validate({field: value})


def test_json_nan_and_infinity_are_refused_as_not_finite() -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        with pytest.raises(ValidationError, match="finite number"):
            GenerationParams.model_validate_json(f'{{"temperature": {literal}}}')


def test_an_int_is_still_a_valid_float() -> None:
    params = GenerationParams.model_validate(
        {"temperature": 1, "top_p": 1, "repetition_penalty": 2}
    )
    assert (params.temperature, params.top_p, params.repetition_penalty) == (1.0, 1.0, 2.0)
    assert isinstance(params.temperature, float)
    assert GenerationParams.model_validate_json('{"temperature": 1}').temperature == 1.0


def test_stop_takes_one_string_or_a_list_in_python_and_in_json() -> None:
    assert GenerationParams.model_validate({"stop": "\n"}).stop == ("\n",)
    assert GenerationParams.model_validate({"stop": ["a", "b"]}).stop == ("a", "b")
    assert GenerationParams.model_validate_json('{"stop": ["a", "b"]}').stop == ("a", "b")
    assert GenerationParams.model_validate_json('{"stop": "a"}').stop == ("a",)
    assert GenerationParams.model_validate({"stop": None}).stop == ()


@pytest.mark.parametrize(
    ("stop", "message"),
    [
        (5, "expected a string or a list of strings, got 5"),
        ({"a": 1}, "expected a string or a list of strings, got an object"),
        ([1], "stop string 0: expected a string, got 1"),
        (["ok", None], "stop string 1: expected a string, got null"),
        (["a", "b", "c", "d", "e"], "5 stop strings given; at most 4 are allowed"),
        (["ok", ""], "must not be empty"),
        (["x" * 257], "stop string 0 is 257 characters long; the limit is 256 characters"),
        (["a" * 100_000, "b" * 100_000], "the limit is 256 characters"),
    ],
)
def test_bad_stop_strings_are_refused_with_one_clear_error(stop: object, message: str) -> None:
    with pytest.raises(ValidationError) as e:
        GenerationParams.model_validate({"stop": stop})
    (error,) = e.value.errors()  # one error, not one per union member or per string
    assert message in error["msg"]


def test_the_stop_limits_are_the_settings() -> None:
    from genq.settings import MAX_STOP_CHARS, MAX_STOP_STRINGS

    assert (MAX_STOP_STRINGS, MAX_STOP_CHARS) == (4, 256)
    assert GenerationParams(stop=("s" * MAX_STOP_CHARS,) * MAX_STOP_STRINGS).stop[3] == "s" * 256


def test_overrides_stay_strict_and_keep_the_job_values() -> None:
    job = GenerationParams(max_new_tokens=32, stop=("###",), seed=3)
    merged = job.with_overrides({"temperature": 1, "stop": "\n"})
    assert (merged.max_new_tokens, merged.seed, merged.stop) == (32, 3, ("\n",))
    assert merged.with_overrides({"top_k": 2}).stop == ("\n",)
    with pytest.raises(ValidationError, match="valid integer"):
        job.with_overrides({"top_k": True})


LONE = "\ud800"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: JobItem(prompt=f"a{LONE}b"), "prompt"),
        (lambda: JobItem(prompt="a", custom_id=LONE), "custom_id"),
        (lambda: GenerationParams.model_validate({"stop": ["ok", LONE]}), "stop"),
        (lambda: JobSpec(items=[JobItem(prompt="a")], metadata={LONE: "v"}), "metadata"),
        (lambda: JobSpec(items=[JobItem(prompt="a")], metadata={"k": LONE}), "metadata"),
        (lambda: JobSpec(items=[JobItem(prompt="a")], idempotency_key=LONE), "idempotency_key"),
    ],
    ids=["prompt", "custom_id", "stop", "metadata-key", "metadata-value", "idempotency-key"],
)
def test_a_lone_surrogate_is_refused_where_it_is(build: Any, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        build()
    (error,) = e.value.errors()
    assert error["loc"][0] == field
    assert error["msg"].startswith("contains a lone surrogate (\\ud800)")
    assert "text must be valid Unicode" in error["msg"]


def test_nul_and_other_control_characters_are_valid_text_and_serialise() -> None:
    spec = JobSpec(items=[JobItem(prompt="a\x00b\x1b[0m", custom_id="c\x00")])
    (message,) = spec.messages("j", 1.0, max_items=16)
    assert WorkChunk.model_validate_json(message).items[0].prompt == "a\x00b\x1b[0m"
    message.encode("utf-8")  # what Redis and Celery will write


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"k": 1}, "valid string"),
        ({"k" * 65: "v"}, "at most 64 characters"),
        ({"k": "v" * 513}, "at most 512 characters"),
        ({"": "v"}, "at least 1 character"),
        ({f"k{i}": "v" for i in range(65)}, "at most 64 items"),
    ],
    ids=["number-value", "long-key", "long-value", "empty-key", "too-many"],
)
def test_metadata_is_short_strings(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"items": [{"prompt": "a"}], "metadata": metadata})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expires_in_s": float("nan")}, "finite number"),
        ({"expires_in_s": float("inf")}, "finite number"),
        ({"expires_in_s": True}, "valid number"),
        ({"expires_in_s": "60"}, "valid number"),
        ({"idempotency_key": 7}, "valid string"),
        ({"idempotency_key": "k" * 257}, "at most 256 characters"),
    ],
)
def test_job_options_are_strict(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"items": [{"prompt": "a"}], **options})


def test_shown_values_are_short_json_and_printable() -> None:
    assert [shown(v) for v in (True, None, 12, 1.5, "12")] == ["true", "null", "12", "1.5", '"12"']
    assert shown(float("nan")) == "NaN"
    assert (shown([1]), shown({"a": 1}), shown(b"x")) == ("an array", "an object", "a bytes")
    assert shown("x" * 100) == '"' + "x" * 40 + '..."'
    assert shown(10**100) == "an integer of 101 digits"
    text = shown(f"a{LONE}\n")
    assert text == '"a\\ud800\\n"'
    text.encode("utf-8")


def test_the_same_content_written_differently_has_one_fingerprint() -> None:
    def spec(metadata: dict[str, str], params: dict[str, object]) -> JobSpec:
        return JobSpec(items=[JobItem(prompt="p", params=params)], metadata=metadata)

    first = spec({"a": "1", "b": "2"}, {"temperature": 1, "top_k": 3})
    same = spec({"b": "2", "a": "1"}, {"top_k": 3, "temperature": 1.0})
    other = spec({"a": "1", "b": "2"}, {"temperature": 0.5, "top_k": 3})
    assert first.fingerprint() == same.fingerprint() != other.fingerprint()
