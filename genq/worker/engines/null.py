"""The ``null`` engine: no model. Returns empty outputs at once, to measure the queue path alone.

Chat items need no template here: the null engine has no tokenizer and generates nothing, so a
conversation is "rendered" as its plain transcript (what the item's prompt already holds), and
GENQ_CHAT_TEMPLATE is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from genq.schema import ChatMessage, chat_transcript
from genq.worker.engines.base import Generation, Prepared


class NullEngine:
    name = "null"
    model_name = "none"
    device = "cpu"
    max_context: int | None = None

    def encode(self, text: str) -> list[int]:
        # One "token" per UTF-8 byte: cheap, deterministic, and never empty for a prompt.
        return list(text.encode())

    def render_chat(self, messages: Sequence[ChatMessage], template: str | None = None) -> str:
        """The conversation's "role: content" transcript; ``template`` is ignored (no model)."""
        return chat_transcript(messages)

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        return [
            Generation(
                outputs=[""] * p.rows,
                finish_reasons=["length"] * p.rows,
                completion_tokens=0,
                token_counts=[0] * p.rows,
            )
            for p in batch
        ]

    def warmup(self) -> None:
        return None
