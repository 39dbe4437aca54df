"""From a queue message's items to what an engine runs: the message checked against the
limits a producer enforces, each prompt (or conversation, rendered with the chat template)
tokenised once and fitted to the model's context. The retries of an item reuse what is
prepared here; :class:`~genq.worker.runner.BatchRunner` admits and runs it."""

from __future__ import annotations

from pydantic import ValidationError

from genq.errors import RefusedMessageError
from genq.schema import (
    ErrorInfo,
    GenerationParams,
    ItemErrorType,
    WorkChunk,
    WorkItem,
    chat_transcript,
)
from genq.settings import Settings
from genq.worker.engines.base import Engine, Prepared
from genq.worker.engines.chat import ChatTemplateError, NoChatTemplate


class ItemRejected(Exception):
    """An item that cannot run (checked against the tokenizer and the model's context)."""

    def __init__(self, error_type: ItemErrorType, message: str) -> None:
        super().__init__(message)
        self.error = ErrorInfo(type=error_type.value, message=message)


def check_limits(chunk: WorkChunk, settings: Settings) -> None:
    """Refuse a chunk no producer would send (:class:`RefusedMessageError`): the limits
    mirror the producer's validation."""
    limit = settings.max_prompt_bytes
    seen: set[int] = set()
    for item in chunk.items:
        if item.index in seen:
            raise RefusedMessageError(f"item index {item.index} appears twice in the message")
        seen.add(item.index)
        if item.params:
            try:  # alone, before the job is touched; merged with the job's defaults later
                GenerationParams.model_validate(item.params)
            except ValidationError as e:
                raise RefusedMessageError(
                    f"item {item.index}'s params do not validate ({first_problem(e)})"
                ) from e
        size = len(item.prompt.encode("utf-8", "surrogatepass"))
        if item.messages is not None:  # what runs: the limit counts their transcript
            transcript = chat_transcript(item.messages)
            size = max(size, len(transcript.encode("utf-8", "surrogatepass")))
        if size > limit:
            raise RefusedMessageError(
                f"item {item.index}'s prompt is {size} bytes, over this worker's limit of "
                f"{limit} (GENQ_MAX_PROMPT_BYTES: set the same on producers and workers)"
            )


def prepare(engine: Engine, settings: Settings, chunk: WorkChunk, item: WorkItem) -> Prepared:
    """``item`` of ``chunk`` tokenised and fitted to the model's context, or
    :class:`ItemRejected` with the error its result is to carry."""
    ids = engine.encode(text_of(engine, settings, item))
    # What the errors call the text that was tokenised.
    prompt = "the prompt" if item.messages is None else "the rendered conversation"
    if not ids:
        raise ItemRejected(ItemErrorType.EMPTY_PROMPT, f"{prompt} tokenises to no tokens")
    params = item.params
    if params.max_new_tokens is not None:
        max_new = params.max_new_tokens
    else:
        assert params.max_length is not None
        max_new = params.max_length - len(ids)
        if max_new < 1:
            raise ItemRejected(
                ItemErrorType.INVALID_PARAMS,
                f"max_length={params.max_length} leaves no room for new tokens after "
                f"{prompt}'s {len(ids)} tokens; raise max_length or use max_new_tokens",
            )
    context = engine.max_context
    if context is not None and len(ids) + max_new > context:
        if params.truncate and context - max_new >= 1:
            ids = ids[len(ids) + max_new - context :]  # keep the end of the prompt
        else:
            raise ItemRejected(
                ItemErrorType.CONTEXT_LENGTH_EXCEEDED,
                f"{prompt} has {len(ids)} tokens and {max_new} new tokens were asked "
                f"for: {len(ids) + max_new} exceeds the model's context of {context} "
                "tokens; shorten the prompt, lower max_new_tokens, or set truncate=true "
                "to drop the start of the prompt",
            )
    return Prepared(chunk.job_id, chunk.enqueued_at, item, ids, max_new)


def text_of(engine: Engine, settings: Settings, item: WorkItem) -> str:
    """The text an item generates from: its prompt, or its conversation rendered with the
    chat template (once, at admission: retries reuse the prepared token ids)."""
    if item.messages is None:
        return item.prompt
    try:
        return engine.render_chat(item.messages, settings.chat_template)
    except NoChatTemplate as e:
        raise ItemRejected(ItemErrorType.NO_CHAT_TEMPLATE, str(e)) from e
    except ChatTemplateError as e:
        raise ItemRejected(ItemErrorType.INVALID_PARAMS, str(e)) from e


def first_problem(error: ValidationError) -> str:
    """A validation error's first problem, on one line: where, and what."""
    problem = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in problem["loc"])
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])
