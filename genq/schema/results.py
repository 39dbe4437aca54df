"""An item's result, as workers write it and clients read it: its outputs or why it has none,
with token usage and timing."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["length", "stop", "eos"]


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
