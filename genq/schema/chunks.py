"""The queue-message format: the items one Celery message carries (:class:`ChunkItem`s in a
:class:`WorkChunk`), cut by :func:`chunk_messages` and counted by :func:`items_in_message`, and
the :class:`WorkItem` a worker resolves each item into."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genq import keyspace
from genq import settings as defaults
from genq.schema.chat import ChatMessage
from genq.schema.params import GenerationParams
from genq.schema.scheduling import Priority


class ChunkItem(BaseModel):
    """One item as a queue message carries it: only what differs between items. The job's
    default parameters live once, in its record; the worker merges them (:meth:`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, strict=True)
    prompt: str = Field(min_length=1)
    custom_id: str | None = Field(None, min_length=1, max_length=defaults.MAX_CUSTOM_ID_CHARS)
    params: dict[str, Any] | None = None  # the item's own overrides of the job's defaults
    messages: tuple[ChatMessage, ...] | None = None  # a chat item (see JobItem.messages)

    def resolve(self, job_params: GenerationParams) -> WorkItem:
        """The item with its identity and merged parameters (ValidationError if they are bad)."""
        return WorkItem(
            index=self.index,
            custom_id=self.custom_id if self.custom_id is not None else str(self.index),
            prompt=self.prompt,
            params=job_params.with_overrides(self.params),
            overrides=self.params or None,
            messages=self.messages,
        )


class WorkItem(BaseModel):
    """One item as the worker runs it: identity, prompt and fully merged parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    custom_id: str
    prompt: str
    params: GenerationParams
    overrides: dict[str, Any] | None = None  # as submitted, for the result (and `genq retry`)
    # A chat item: the worker generates from these rendered with the chat template, not from
    # ``prompt`` (their plain transcript).
    messages: tuple[ChatMessage, ...] | None = None


class WorkChunk(BaseModel):
    """The body of one Celery message: several items of one job (:func:`chunk_messages`)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=keyspace.ID_PATTERN)
    enqueued_at: float = Field(allow_inf_nan=False)
    priority: Priority = Priority.NORMAL  # the job's, so a worker's pool can order by it
    items: list[ChunkItem] = Field(min_length=1, max_length=defaults.MAX_CHUNK_ITEMS)


def chunk_messages(
    job_id: str,
    enqueued_at: float,
    priority: Priority,
    items: Sequence[ChunkItem],
    max_items: int,
) -> list[str]:
    """Serialised :class:`WorkChunk` messages holding ``items`` in order: at most ``max_items``
    each, and a new message once one holds CHUNK_MAX_BYTES of item JSON (one item at least).

    Items are serialised one by one so that each message's size is known exactly; the envelope
    around them is the WorkChunk's three fields (a test checks they round-trip).
    """
    # A normal job's messages leave the field out: workers of the previous version, which
    # refuse fields they do not know, still run them.
    named = "" if priority is Priority.NORMAL else f'"priority":"{priority.value}",'
    head = f'{{"job_id":{json.dumps(job_id)},"enqueued_at":{enqueued_at!r},{named}"items":['
    messages: list[str] = []
    parts: list[str] = []
    size = 0
    for item in items:
        text = item.model_dump_json(exclude_none=True)
        if parts and (len(parts) >= max_items or size + len(text) > defaults.CHUNK_MAX_BYTES):
            messages.append(head + ",".join(parts) + "]}")
            parts, size = [], 0
        parts.append(text)
        size += len(text) + 1
    if parts:
        messages.append(head + ",".join(parts) + "]}")
    return messages


def items_in_message(message: str) -> int:
    """How many items a message of :func:`chunk_messages` holds, without parsing it: each item
    is serialised starting with its ``{"index":`` key, and that text cannot occur elsewhere
    (inside a string its quotes are escaped; no other object has an ``index`` key)."""
    return message.count('{"index":')
