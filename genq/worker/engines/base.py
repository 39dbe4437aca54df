"""The engine interface: render chat items, tokenise prompts, and generate for a batch of
prepared items."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from genq.schema import ChatMessage, FinishReason, GenerationParams, WorkItem


@dataclass(frozen=True)
class Prepared:
    """A work item ready for the model: tokenised, with its length limit resolved."""

    job_id: str
    enqueued_at: float
    item: WorkItem
    prompt_ids: list[int]
    max_new_tokens: int

    @property
    def params(self) -> GenerationParams:
        return self.item.params

    @property
    def rows(self) -> int:
        """Sequences this item adds to a forward pass."""
        return self.item.params.num_return_sequences


@dataclass
class Generation:
    """What an engine produced for one item (prompt excluded from the outputs)."""

    outputs: list[str]
    finish_reasons: list[FinishReason]
    completion_tokens: int
    token_counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Sequence[tuple[str, FinishReason, int]], stops: Sequence[str]) -> Generation:
        """An item's generation from its rows: (decoded text, finish reason, tokens generated).

        A row that ended on a stop string is cut before the earliest stop string in it.
        """
        outputs = [
            cut_at_stop(text, stops) if reason == "stop" else text for text, reason, _ in rows
        ]
        counts = [count for _, _, count in rows]
        return cls(outputs, [reason for _, reason, _ in rows], sum(counts), counts)


def ends_with_stop(
    decode: Callable[[list[int]], str], generated: list[int], stops: Sequence[str]
) -> bool:
    """Whether the newest token completed a stop string.

    Engines check after every token, so only the tail needs decoding: a token is at least one
    byte and a character at most four, so the last 4 x (longest stop) + 4 tokens suffice.
    """
    window = 4 * max(len(s) for s in stops) + 4
    text = decode(generated[-window:])
    return any(s in text for s in stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest stop string (stop strings are not part of an output)."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory (torch's ``OutOfMemoryError``,
    CTranslate2's "CUDA failed with error out of memory"), which a smaller batch avoids."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


class Engine(Protocol):
    """A text-generation backend. Implementations load their model once, in ``__init__``."""

    name: str
    model_name: str
    device: str
    max_context: int | None  # positions the model has (prompt + new tokens); None: unbounded

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model sees it (no special tokens added)."""
        ...

    def render_chat(self, messages: Sequence[ChatMessage], template: str | None = None) -> str:
        """The prompt text for a chat item: ``messages`` rendered with ``template`` (the
        configured GENQ_CHAT_TEMPLATE, which wins) or the model's own chat template, ending
        where the assistant's reply starts. The runner encodes it as it would a prompt.

        Raises :class:`~genq.worker.engines.chat.NoChatTemplate` when there is no template,
        and :class:`~genq.worker.engines.chat.ChatTemplateError` when it fails to render.
        """
        ...

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        """Generate for every item of ``batch`` (which share sampling parameters), in order."""
        ...

    def warmup(self) -> None:
        """Run one small generation so the first real batch pays no start-up cost."""
        ...
