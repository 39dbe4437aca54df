"""Chat items: the messages of a conversation, and the plain-text transcript that stands for them
as the item's prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genq import settings as defaults
from genq.text import Text

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
