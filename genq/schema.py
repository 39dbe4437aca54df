"""The job contract, defined once and shared by the producer, the worker, the CLI and the API.

Serialisation happens here only: models go to Redis and Celery as ``model_dump_json`` strings and
come back through ``model_validate_json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from genq import keyspace
from genq import settings as defaults
from genq.text import CustomId, IdempotencyKey, MetadataKey, MetadataValue, Text, shown


class JobStatus(str, Enum):
    """Lifecycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # every item ended, with a result or a per-item error
    FAILED = "failed"  # the job could not run at all (e.g. it could not be enqueued)
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its deadline (expires_in_s) passed first; finished results are kept


TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
UNFINISHED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class Priority(str, Enum):
    """How urgent a job is: every worker serves the highest waiting priority first (a level
    passed over GENQ_STARVE_AFTER_MESSAGES times in a row gets the next message; see
    docs/scheduling.md)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent: the order levels are served in."""
        return PRIORITIES.index(self)


PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # most urgent first

FinishReason = Literal["length", "stop", "eos"]


class GenerationParams(BaseModel):
    """Generation parameters of one item (job defaults merged with the item's overrides).

    ``max_length`` is the seed tutorial's total length (prompt + new tokens); the worker turns it
    into ``max_new_tokens`` once the prompt is tokenised. Give one of the two, not both.
    """

    # Strict: a bool or a string is never read as a number (JSON `true` is not 1, "12" is not
    # 12), a number never as a bool; an int is still a valid float. No NaN or Infinity.
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(None, strict=True, ge=1, le=defaults.MAX_NEW_TOKENS_LIMIT)
    max_length: int | None = Field(None, strict=True, ge=2, le=defaults.MAX_NEW_TOKENS_LIMIT * 2)
    do_sample: bool = Field(True, strict=True)
    temperature: float = Field(
        defaults.DEFAULT_TEMPERATURE, strict=True, allow_inf_nan=False, gt=0.0, le=100.0
    )
    top_k: int = Field(defaults.DEFAULT_TOP_K, strict=True, ge=0, le=1_000_000)
    top_p: float = Field(defaults.DEFAULT_TOP_P, strict=True, allow_inf_nan=False, gt=0.0, le=1.0)
    num_return_sequences: int = Field(1, strict=True, ge=1, le=defaults.MAX_RETURN_SEQUENCES)
    repetition_penalty: float = Field(1.0, strict=True, allow_inf_nan=False, gt=0.0, le=10.0)
    stop: tuple[Text, ...] = ()
    seed: int | None = Field(None, strict=True, ge=0, le=2**63 - 1)
    # A prompt too long for the model's context with max_new_tokens: fail the item (default),
    # or keep its last tokens (the start of the prompt is dropped).
    truncate: bool = Field(False, strict=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        """One string or a list of at most MAX_STOP_STRINGS non-empty strings of at most
        MAX_STOP_CHARS characters each (checked here, before anything copies them)."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, list | tuple):
            raise PydanticCustomError(
                "stop_type",
                "expected a string or a list of strings, got {got}",
                {"got": shown(value)},
            )
        if len(value) > defaults.MAX_STOP_STRINGS:
            raise PydanticCustomError(
                "too_many_stop_strings",
                "{count} stop strings given; at most {limit} are allowed",
                {"count": len(value), "limit": defaults.MAX_STOP_STRINGS},
            )
        for position, stop in enumerate(value):
            if not isinstance(stop, str):
                raise PydanticCustomError(
                    "stop_type",
                    "stop string {position}: expected a string, got {got}",
                    {"position": position, "got": shown(stop)},
                )
            if not stop:
                raise PydanticCustomError(
                    "empty_stop_string",
                    "stop strings must not be empty (stop string {position})",
                    {"position": position},
                )
            if len(stop) > defaults.MAX_STOP_CHARS:
                raise PydanticCustomError(
                    "stop_string_too_long",
                    "stop string {position} is {length} characters long; "
                    "the limit is {limit} characters",
                    {"position": position, "length": len(stop), "limit": defaults.MAX_STOP_CHARS},
                )
        return tuple(value)

    @model_validator(mode="after")
    def _one_length_limit(self) -> GenerationParams:
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError("give max_new_tokens or max_length (prompt + new tokens), not both")
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                "num_return_sequences > 1 needs sampling (greedy decoding would return the same "
                "output every time); drop --greedy / do_sample=false"
            )
        if self.max_new_tokens is None and self.max_length is None:
            object.__setattr__(self, "max_new_tokens", defaults.DEFAULT_MAX_NEW_TOKENS)
        return self

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> GenerationParams:
        """Return these parameters with ``overrides`` applied (validated; unknown keys refused).

        An override of one length limit replaces the other, so a job default of
        ``max_new_tokens`` and an item's ``max_length`` do not conflict.
        """
        if not overrides:
            return self
        base = self.model_dump(exclude_unset=True, exclude_defaults=False)
        if "max_length" in overrides or "max_new_tokens" in overrides:
            base.pop("max_length", None)
            base.pop("max_new_tokens", None)
        return GenerationParams.model_validate({**base, **overrides})


ChatRole = Literal["system", "developer", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    """One message of a chat conversation (an OpenAI ``/v1/chat/completions`` line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: ChatRole
    content: Text = Field(max_length=defaults.MAX_PROMPT_BYTES_LIMIT)
    name: Text | None = Field(None, max_length=64)


def chat_transcript(messages: Sequence[ChatMessage]) -> str:
    """A conversation as plain text ("role: content" lines): what results show as the item's
    prompt and what the size limits count. The worker renders the model's chat template from
    the messages themselves."""
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


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


class TenantPolicy(BaseModel):
    """A tenant's share of the workers and its quotas (docs/scheduling.md). Kept in Redis, so
    that every producer enforces the same quotas and every worker's refill the same weights."""

    model_config = ConfigDict(extra="forbid")

    # Within a priority, backlogged tenants get items in proportion to their weights.
    weight: float = Field(
        defaults.DEFAULT_TENANT_WEIGHT,
        strict=True,
        allow_inf_nan=False,
        ge=defaults.MIN_TENANT_WEIGHT,
        le=defaults.MAX_TENANT_WEIGHT,
    )
    # Items not yet done across the tenant's unfinished jobs (None: no limit).
    max_queued_items: int | None = Field(None, strict=True, ge=1)
    max_jobs_in_progress: int | None = Field(None, strict=True, ge=1)  # unfinished jobs


class ItemErrorType(str, Enum):
    """Why an item ended without outputs."""

    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # prompt + max_new_tokens > model context
    INVALID_PARAMS = "invalid_params"  # parameters that only the tokenizer can check
    EMPTY_PROMPT = "empty_prompt"  # the prompt tokenises to nothing
    GENERATION_ERROR = "generation_error"  # the engine raised for this item
    NO_CHAT_TEMPLATE = "no_chat_template"  # a chat item, and the model has no chat template
    INVALID_REQUEST = "invalid_request"  # refused before it ran (an API line genq cannot honour)
    EXPIRED = "expired"  # the job's deadline passed before the item was generated
    OUT_OF_MEMORY = "out_of_memory"  # the device ran out of memory even with the item alone
    WORKER_LOST = "worker_lost"  # its worker died every time it was being generated


class ErrorInfo(BaseModel):
    """Why an item produced no output."""

    type: str
    message: str


class Usage(BaseModel):
    """Token counts, measured with the model's tokenizer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated tokens summed over all returned sequences

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timing(BaseModel):
    """When the item moved through the system (epoch seconds) and how it was batched."""

    enqueued_at: float
    started_at: float
    finished_at: float
    batch_size: int = 0  # sequences in the forward pass that generated this item


class ItemResult(BaseModel):
    """The result of one item: its outputs, or an error."""

    custom_id: str
    index: int
    prompt: str
    outputs: list[str] = Field(default_factory=list)
    finish_reason: FinishReason | None = None  # of the first output
    finish_reasons: list[FinishReason] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    error: ErrorInfo | None = None
    timing: Timing | None = None
    worker_id: str | None = None
    # The item's own parameter overrides as submitted (None: it had none), so that a failed
    # item can be submitted again as it was (`genq retry`).
    params: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class JobInfo(BaseModel):
    """A job's status and counters, read in O(1) Redis calls."""

    id: str
    status: JobStatus
    total: int
    completed: int = 0  # items with a result and no error
    failed: int = 0  # items that ended with an error
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    metadata: dict[str, str] = Field(default_factory=dict)
    error: str | None = None  # why the whole job failed, when status is failed
    expires_at: datetime | None = None  # the job's deadline, when it has one
    tenant: str | None = None  # the API tenant that owns it (None: submitted from Redis directly)
    priority: Priority = Priority.NORMAL

    @property
    def done(self) -> int:
        return self.completed + self.failed

    @property
    def pending(self) -> int:
        return max(self.total - self.done, 0)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class WorkerInfo(BaseModel):
    """A worker's identity, configuration and counters, as it reports them in its heartbeat."""

    id: str
    hostname: str
    pid: int
    engine: str
    model: str
    device: str
    max_batch_size: int
    queue: str = defaults.DEFAULT_QUEUE  # the Celery queue it consumes
    started_at: datetime
    last_seen: datetime
    batches: int = 0
    items: int = 0
    tokens: int = 0
    busy_s: float = 0.0  # wall time spent in batches (utilisation: its growth over wall time)
    batch_sizes: dict[int, int] = Field(default_factory=dict)  # sequences per batch -> count


class DeadLetter(BaseModel):
    """A queue message no worker could use, kept (bounded) with why it was refused."""

    at: datetime
    reason: str  # one line: what was wrong with the message
    queue: str
    worker_id: str | None = None
    task: str | None = None  # the task name the message asked for, when it had one
    job_id: str | None = None  # the job it named, when it named one
    message: str  # the raw message (its first DEAD_LETTER_MESSAGE_CHARS characters)
    message_bytes: int  # the raw message's full size


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def from_epoch(value: str | bytes | float | None) -> datetime | None:
    if value in (None, "", b""):
        return None
    return datetime.fromtimestamp(float(value), tz=timezone.utc)  # type: ignore[arg-type]
