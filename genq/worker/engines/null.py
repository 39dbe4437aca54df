"""The ``null`` engine: no model. Returns empty outputs, to measure the queue path alone.

Each :meth:`~NullEngine.generate` call sleeps ``GENQ_NULL_BATCH_MS`` (default 0: returns at
once), whatever the batch holds, as a GPU-bound worker spends about one forward pass per batch:
scheduling and scaling can then be tested as such a worker behaves, without a model.

Chat items need no template here: the null engine has no tokenizer and generates nothing, so a
conversation is "rendered" as its plain transcript (what the item's prompt already holds), and
GENQ_CHAT_TEMPLATE is ignored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from genq.schema import ChatMessage, chat_transcript
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared


class NullEngine:
    """No model: every row comes back empty, after a fixed cost per batch."""

    name = "null"
    model_name = "none"
    device = "cpu"
    max_context: int | None = None
    batch_ms = 0  # class-wide default, so subclasses that skip __init__ still work

    def __init__(self, batch_ms: int = 0) -> None:
        self.batch_ms = batch_ms

    @classmethod
    def load(cls, settings: Settings) -> NullEngine:
        """A null engine whose batches each take GENQ_NULL_BATCH_MS."""
        return cls(batch_ms=settings.null_batch_ms)

    def encode(self, text: str) -> list[int]:
        # One "token" per UTF-8 byte: cheap, deterministic, and never empty for a prompt.
        return list(text.encode())

    def render_chat(self, messages: Sequence[ChatMessage], template: str | None = None) -> str:
        """The conversation's "role: content" transcript; ``template`` is ignored (no model)."""
        return chat_transcript(messages)

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        """Empty outputs ("length", no tokens) for every row, after ``batch_ms``."""
        if self.batch_ms:
            time.sleep(self.batch_ms / 1000)
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

    def decoder(self) -> None:
        return None  # static batches only

    def release_memory(self) -> None:
        return None
