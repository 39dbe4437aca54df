"""A job as a user submits it: its items (:class:`JobItem`) and the validated job
(:class:`JobSpec`), with the fingerprint an idempotent submit compares and its cut into queue
messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genq import settings as defaults
from genq.schema.chat import ChatMessage, chat_transcript
from genq.schema.chunks import ChunkItem, chunk_messages
from genq.schema.params import GenerationParams
from genq.schema.scheduling import Priority
from genq.text import CustomId, IdempotencyKey, MetadataKey, MetadataValue, Text


class JobItem(BaseModel):
    """One prompt of a job, as a user submits it."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text = Field(min_length=1)
    custom_id: CustomId | None = None
    # A chat item: the worker renders these with the model's chat template (or
    # GENQ_CHAT_TEMPLATE) and generates the assistant's reply; ``prompt`` is their transcript.
    messages: tuple[ChatMessage, ...] | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _chat_prompt(cls, data: Any) -> Any:
        # A chat item may leave out the prompt: it is the conversation's transcript.
        if isinstance(data, Mapping) and data.get("messages") and data.get("prompt") is None:
            messages = [ChatMessage.model_validate(m) for m in data["messages"]]
            return {**data, "prompt": chat_transcript(messages) or "-"}
        return data

    # The item's overrides; their keys and values are checked against the job's parameters
    # when they are merged (validate_job), which knows both.
    params: dict[Text, Any] | None = None


class JobSpec(BaseModel):
    """A validated job: items, default parameters and metadata. Every item's params are merged."""

    model_config = ConfigDict(extra="forbid")

    items: list[JobItem] = Field(min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=defaults.MAX_METADATA_ITEMS
    )
    # A retried submit with the same key returns the first job's id instead of a new job.
    idempotency_key: IdempotencyKey | None = None
    # Deadline: this long after submission, items not yet generated end as `expired`.
    expires_in_s: float | None = Field(
        None, strict=True, allow_inf_nan=False, gt=0, le=defaults.MAX_EXPIRES_IN_S
    )
    # None: the producer's GENQ_DEFAULT_PRIORITY.
    priority: Priority | None = None

    @model_validator(mode="after")
    def _unique_custom_ids(self) -> JobSpec:
        for index, first, cid in duplicate_custom_ids(self.items):
            raise ValueError(
                f"duplicate custom_id {cid!r} at items {first} and {index}; "
                "custom_id must be unique within a job"
            )
        return self

    def fingerprint(self) -> str:
        """A digest of everything the job asks for (its idempotency key aside): two submits
        with one key must carry the same fingerprint."""
        content = _canonical(self.model_dump(mode="json", exclude={"idempotency_key"}))
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def messages(
        self,
        job_id: str,
        enqueued_at: float,
        max_items: int,
        priority: Priority = Priority.NORMAL,
    ) -> list[str]:
        """The job's queue messages: chunks of at most ``max_items`` items and about
        CHUNK_MAX_BYTES of JSON each, serialised (see :class:`WorkChunk`)."""
        return chunk_messages(
            job_id,
            enqueued_at,
            priority,
            [
                ChunkItem(
                    index=i,
                    prompt=item.prompt,
                    custom_id=item.custom_id,
                    params=item.params,
                    messages=item.messages,
                )
                for i, item in enumerate(self.items)
            ],
            max_items,
        )


def _canonical(value: Any) -> Any:
    """``value`` (JSON data) with each whole float as an int: ``1.0`` and ``1`` ask the same."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def duplicate_custom_ids(items: list[JobItem]) -> list[tuple[int, int, str]]:
    """(index, index of first use, custom_id) for every item whose custom_id was already used."""
    seen: dict[str, int] = {}
    duplicates = []
    for index, item in enumerate(items):
        cid = item.custom_id if item.custom_id is not None else str(index)
        if cid in seen:
            duplicates.append((index, seen[cid], cid))
        else:
            seen[cid] = index
    return duplicates
