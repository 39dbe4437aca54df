"""OpenAI request bodies in genq's terms (genq.api.lines): what each parameter means, and that
every parameter genq cannot honour is refused with a message naming it, never ignored."""

from __future__ import annotations

from typing import Any

import pytest

from genq.api.lines import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    RequestRefused,
    translate,
)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt2", "prompt": "Hello", **fields}


def test_openais_defaults_apply_not_genqs() -> None:
    params = translate(COMPLETIONS, body()).params
    assert params.max_new_tokens == 16  # OpenAI's max_tokens default
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 1.0, 0)
    assert params.do_sample


def test_each_supported_parameter_maps_to_genqs() -> None:
    params = translate(
        COMPLETIONS,
        body(
            max_tokens=5,
            temperature=0.7,
            top_p=0.9,
            n=3,
            stop="\n",
            seed=1,
            user="u-1",
            top_k=40,
            repetition_penalty=1.2,
            best_of=3,
            echo=False,
            logprobs=None,
            stream=False,
            presence_penalty=0,
            suffix=None,
        ),
    ).params
    assert params.max_new_tokens == 5
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.9, 40)
    assert (params.num_return_sequences, params.stop, params.seed) == (3, ("\n",), 1)
    assert params.repetition_penalty == 1.2


def test_temperature_zero_is_greedy_and_vllms_top_k_minus_one_is_off() -> None:
    params = translate(COMPLETIONS, body(temperature=0, top_k=-1)).params
    assert not params.do_sample
    assert params.top_k == 0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": 1}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"stream": True}, "stream"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"n": 99}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"seed": -1}, "seed"),
        ({"user": 3}, "user"),
        ({"tempreature": 1}, "tempreature"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
    ],
)
def test_what_genq_cannot_honour_is_refused_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestRefused) as refused:
        translate(COMPLETIONS, body(**fields))
    assert refused.value.param == param
    assert refused.value.message


def test_a_misspelt_parameter_gets_a_suggestion() -> None:
    with pytest.raises(RequestRefused, match="did you mean 'temperature'"):
        translate(COMPLETIONS, body(tempreature=1))


def test_chat_messages_with_text_parts_and_max_completion_tokens() -> None:
    asked = translate(
        CHAT_COMPLETIONS,
        {
            "model": "gpt2",
            "max_completion_tokens": 7,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
        },
    )
    assert asked.messages is not None
    assert [m.content for m in asked.messages] == ["Be brief.", "Hi"]
    assert asked.params.max_new_tokens == 7
    assert asked.prompt == "system: Be brief.\nuser: Hi"


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        ["hi"],
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "x", "tool_calls": []}],
    ],
)
def test_chat_bodies_genq_cannot_run_are_refused(messages: Any) -> None:
    with pytest.raises(RequestRefused):
        translate(CHAT_COMPLETIONS, {"model": "gpt2", "messages": messages})
    with pytest.raises(RequestRefused, match="tools"):
        translate(
            CHAT_COMPLETIONS,
            {
                "model": "gpt2",
                "tools": [{"type": "function"}],
                "messages": [{"role": "user", "content": "x"}],
            },
        )
