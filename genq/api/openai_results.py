"""genq results as OpenAI sends them: a result as the ``text_completion`` /
``chat.completion`` response body, the HTTP status its error would have had at OpenAI, and a
batch output (or error) file line, with ids stable across a finalisation done twice.

Used by the single-request endpoints (:mod:`genq.api.completions`) and by the batch output
writer (:mod:`genq.api.batch_output`). Requests the other way are :mod:`genq.api.lines`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from genq.api.errors import error_body
from genq.api.lines import CHAT_COMPLETIONS
from genq.schema import ItemErrorType, ItemResult


def _id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"{prefix}{digest}"


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"  # genq's eos and stop string: "stop"


def response_object(
    endpoint: str, result: ItemResult, model: str, created: int, ident: str
) -> dict[str, Any]:
    """A successful result as OpenAI's response body for ``endpoint``."""
    reasons: list[str | None] = list(result.finish_reasons) or [result.finish_reason] * len(
        result.outputs
    )
    usage = {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }
    if endpoint == CHAT_COMPLETIONS:
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish(reason),
            }
            for i, (text, reason) in enumerate(zip(result.outputs, reasons, strict=False))
        ]
        return {
            "id": _id("chatcmpl-", ident),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": _finish(reason)}
        for i, (text, reason) in enumerate(zip(result.outputs, reasons, strict=False))
    ]
    return {
        "id": _id("cmpl-", ident),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


# Item errors a client caused (400) versus the service's (500).
_CLIENT_ERRORS = {
    ItemErrorType.CONTEXT_LENGTH_EXCEEDED,
    ItemErrorType.INVALID_PARAMS,
    ItemErrorType.EMPTY_PROMPT,
    ItemErrorType.NO_CHAT_TEMPLATE,
    ItemErrorType.INVALID_REQUEST,
}


def error_status(result: ItemResult) -> int:
    """The HTTP status OpenAI would have answered for a result's error."""
    kind = result.error.type if result.error else ""
    return 400 if kind in {e.value for e in _CLIENT_ERRORS} else 500


def is_expired(result: ItemResult) -> bool:
    return result.error is not None and result.error.type == ItemErrorType.EXPIRED.value


def output_line(
    endpoint: str, job_id: str, result: ItemResult, model: str, created: int
) -> dict[str, Any]:
    """A result as a batch output (or error) file line."""
    ident = f"{job_id}:{result.index}"
    if result.error is None:
        status, body = 200, response_object(endpoint, result, model, created, ident)
    else:
        status = error_status(result)
        body = error_body(status, result.error.message, result.error.type)
    return {
        "id": _id("batch_req_", ident),
        "custom_id": result.custom_id,
        "response": {"status_code": status, "request_id": _id("req_", ident), "body": body},
        "error": None,
    }


def expired_line(job_id: str, index: int, custom_id: str) -> dict[str, Any]:
    """The error file's line for a request not run before the batch's window closed."""
    return {
        "id": _id("batch_req_", f"{job_id}:{index}"),
        "custom_id": custom_id,
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }
