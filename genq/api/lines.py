"""OpenAI request bodies in genq's terms: what a ``/v1/completions`` or
``/v1/chat/completions`` request (a batch input line's ``body``, or a single request) means
in genq's parameters, and the endpoints' OpenAI defaults. The way back, a genq result as the
object OpenAI would send, is :mod:`genq.api.openai_results`.

Used by batches (one input line each) and by the single-request endpoints alike. A parameter
genq cannot honour is refused with a clear message (:class:`RequestRefused`), never ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from genq.api.errors import first_problem
from genq.schema import ChatMessage, GenerationParams, chat_transcript
from genq.settings import MAX_RETURN_SEQUENCES

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
ENDPOINTS = (COMPLETIONS, CHAT_COMPLETIONS)

OPENAI_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# OpenAI's sampling defaults (temperature 1, top_p 1, no top-k), not genq's own (top_k 50,
# top_p 0.95): a request means what it means at OpenAI.
OPENAI_DEFAULTS = GenerationParams(
    max_new_tokens=OPENAI_MAX_TOKENS, temperature=1.0, top_p=1.0, top_k=0, do_sample=True
)
# Chat has no max_tokens default at OpenAI (the model's limit); genq's is its own default.
CHAT_DEFAULTS = OPENAI_DEFAULTS.model_copy(update={"max_new_tokens": 64})

_COMMON = {
    "model",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "user",
    "top_k",
    "repetition_penalty",
    "stream",
    "stream_options",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "metadata",
    "store",
    "service_tier",
}
_COMPLETION_FIELDS = _COMMON | {"prompt", "max_tokens", "best_of", "echo", "suffix"}
_CHAT_FIELDS = _COMMON | {
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "modalities",
    "audio",
    "reasoning_effort",
    "prediction",
    "web_search_options",
}
# Accepted only at their neutral value: anything else asks for what genq does not do.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "stream_options": (None,),
    "logprobs": (None, False),
    "echo": (None, False),
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "store": (None, False, True),
    "service_tier": (None, "auto", "default"),
    "metadata": (None,),
}
_WHY_NOT = {
    "stream": "streaming is not supported here (a batch line, or genq's single requests, "
    "answer once)",
    "logprobs": "genq does not return log probabilities",
    "top_logprobs": "genq does not return log probabilities",
    "echo": "genq does not echo the prompt",
    "suffix": "genq's models do not insert text (suffix)",
    "presence_penalty": "use repetition_penalty (genq's and vLLM's) instead",
    "frequency_penalty": "use repetition_penalty (genq's and vLLM's) instead",
    "logit_bias": "genq does not apply logit_bias",
}


class RequestRefused(Exception):
    """A request genq will not run as asked: what was wrong, and which parameter."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Request:
    """One OpenAI request in genq's terms."""

    model: str
    prompt: str  # the prompt, or the chat conversation's transcript
    messages: tuple[ChatMessage, ...] | None
    params: GenerationParams  # complete: the endpoint's defaults with the request's values
    overrides: dict[str, Any]  # what differs from ``defaults_for(endpoint)``


def defaults_for(endpoint: str) -> GenerationParams:
    return CHAT_DEFAULTS if endpoint == CHAT_COMPLETIONS else OPENAI_DEFAULTS


def translate(endpoint: str, body: Any) -> Request:
    """The genq request an OpenAI body asks for; :class:`RequestRefused` if genq cannot
    honour it exactly."""
    if not isinstance(body, Mapping):
        raise RequestRefused("the request body must be a JSON object", "body")
    fields = _CHAT_FIELDS if endpoint == CHAT_COMPLETIONS else _COMPLETION_FIELDS
    for name in body:
        if name not in fields:
            close = difflib.get_close_matches(str(name), sorted(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RequestRefused(
                f"unknown parameter {str(name)[:64]!r}{hint}", str(name)[:64], "unknown_parameter"
            )
    for name, allowed in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(value == a and type(value) is type(a) for a in allowed):
            why = _WHY_NOT.get(name, "genq does not support it")
            raise RequestRefused(
                f"{name}={_short(value)} is not supported: {why}", name, "unsupported_parameter"
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRefused(
            "model is required: the served model's name (GET /v1/models)",
            "model",
            "missing_required_parameter",
        )
    params: dict[str, Any] = {}
    if endpoint == CHAT_COMPLETIONS:
        messages = _messages(body.get("messages"))
        prompt = chat_transcript(messages)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        limit_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    else:
        messages = None
        prompt = _prompt(body.get("prompt"))
        limit, limit_name = body.get("max_tokens"), "max_tokens"
    if limit is not None:
        params["max_new_tokens"] = _integer(limit, limit_name, 1)
    temperature = body.get("temperature")
    if temperature is not None:
        value = _number(temperature, "temperature", 0.0)
        if value == 0:
            params["do_sample"] = False  # OpenAI's temperature 0: greedy
        else:
            params["temperature"] = float(value)
    if body.get("top_p") is not None:
        top_p = _number(body["top_p"], "top_p", 0.0)
        if top_p == 0:
            raise RequestRefused(
                "top_p must be > 0 (for greedy output, set temperature to 0)", "top_p"
            )
        params["top_p"] = float(top_p)
    if body.get("top_k") is not None:
        top_k = _integer(body["top_k"], "top_k", -1)
        params["top_k"] = max(top_k, 0)  # vLLM's -1 and 0 both mean no top-k
    if body.get("repetition_penalty") is not None:
        params["repetition_penalty"] = float(
            _number(body["repetition_penalty"], "repetition_penalty", 0.0)
        )
    n = 1 if body.get("n") is None else _integer(body["n"], "n", 1)
    if n > MAX_RETURN_SEQUENCES:
        raise RequestRefused(f"n is {n}; at most {MAX_RETURN_SEQUENCES} are allowed", "n")
    best_of = body.get("best_of")
    if best_of is not None and _integer(best_of, "best_of", 1) != n:
        raise RequestRefused(
            "best_of other than n is not supported (genq returns every "
            "sequence it generates; ask for n instead)",
            "best_of",
            "unsupported_parameter",
        )
    if n > 1:
        if params.get("do_sample") is False:
            raise RequestRefused(
                "n > 1 with temperature 0 would return the same text n "
                "times; use n=1, or a temperature above 0",
                "n",
            )
        params["num_return_sequences"] = n
    if body.get("stop") is not None:
        params["stop"] = body["stop"]
    if body.get("seed") is not None:
        params["seed"] = _integer(body["seed"], "seed", 0)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestRefused("user must be a string", "user")
    defaults = defaults_for(endpoint)
    try:
        merged = defaults.with_overrides(params)
    except ValidationError as e:
        where, message = first_problem(e)
        name = {"max_new_tokens": limit_name, "num_return_sequences": "n"}.get(where, where) or None
        raise RequestRefused(f"{name}: {message}" if name else message, name) from None
    return Request(model=model, prompt=prompt, messages=messages, params=merged, overrides=params)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, list):
        raise RequestRefused(
            "prompt must be one string (a list of several prompts, or of "
            "token ids, is not supported: give each prompt its own line)",
            "prompt",
            "unsupported_parameter",
        )
    if not isinstance(value, str):
        raise RequestRefused("prompt is required: a string", "prompt", "missing_required_parameter")
    if not value:
        raise RequestRefused("prompt must not be empty", "prompt")
    return value


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise RequestRefused(
            "messages is required: a non-empty list of {role, content}",
            "messages",
            "missing_required_parameter",
        )
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise RequestRefused(f"messages[{i}] must be an object", f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not (
                    isinstance(part, Mapping)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise RequestRefused(
                        f"messages[{i}].content: only text parts are supported",
                        f"messages[{i}].content",
                        "unsupported_parameter",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise RequestRefused(
                f"messages[{i}]: {sorted(extra)[0]!r} is not supported (text messages only)",
                f"messages[{i}]",
                "unsupported_parameter",
            )
        try:
            out.append(ChatMessage.model_validate({**message, "content": content}))
        except ValidationError as e:
            where, message = first_problem(e)
            raise RequestRefused(
                f"messages[{i}].{where}: {message}", f"messages[{i}].{where}"
            ) from None
    return tuple(out)


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestRefused(f"{name} must be an integer, got {_short(value)}", name)
    if value < minimum:
        raise RequestRefused(f"{name} must be >= {minimum}, got {value}", name)
    return value


def _number(value: Any, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestRefused(f"{name} must be a number, got {_short(value)}", name)
    if value < minimum:
        raise RequestRefused(f"{name} must be >= {minimum:g}, got {value}", name)
    return float(value)


def _short(value: Any) -> str:
    from genq.text import shown

    return shown(value)
