"""The engine interface: render chat items, tokenise prompts, and generate for a batch of
prepared items; and :func:`check_stop`, the one rule every engine ends a row by.

An engine that schedules itself (vLLM on a GPU, say) fits as one module plus one entry in
:data:`genq.worker.engines.ENGINES`: its :meth:`Engine.decoder` returns a :class:`Decoder`
whose ``add`` maps onto the engine's own ``add_request``, ``step`` onto its ``step`` (handing
back the requests it reports finished), and ``drop``/``clear`` onto ``abort``; its
``generate`` may simply add a batch and step until it drains.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from genq.schema import ChatMessage, FinishReason, GenerationParams, WorkItem

if TYPE_CHECKING:
    from genq.settings import Settings


def batch_key(params: GenerationParams) -> Hashable:
    """Parameters that must be equal for items to share one ``generate`` call."""
    if not params.do_sample:
        return ("greedy", params.repetition_penalty, params.num_return_sequences)
    return (
        "sample",
        params.temperature,
        params.top_k,
        params.top_p,
        params.repetition_penalty,
        params.num_return_sequences,
        params.seed,
    )


@dataclass(frozen=True, eq=False)
class Prepared:
    """A work item ready for the model: tokenised, with its length limit resolved. Compared
    and hashed by identity: two deliveries of one item are two objects."""

    job_id: str
    enqueued_at: float
    item: WorkItem
    prompt_ids: list[int]
    max_new_tokens: int

    @property
    def params(self) -> GenerationParams:
        return self.item.params

    # Read for every batch the scheduler plans, so worked out once.
    rows: int = field(init=False)  # sequences this item adds to a forward pass
    batch_key: Hashable = field(init=False)  # equal for items that may share a generate call

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", self.item.params.num_return_sequences)
        object.__setattr__(self, "batch_key", batch_key(self.item.params))


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


def check_stop(
    generated: Sequence[int],
    *,
    eos_id: int | None,
    stops: Sequence[str],
    max_new_tokens: int,
    decode: Callable[[list[int]], str],
) -> FinishReason | None:
    """Why a row ends after its newest token, or None while it goes on.

    Every engine calls this after each token it generates for a row (``generated``: the
    row's new tokens so far, prompt excluded). The first rule that holds wins:

    1. ``"eos"``: the newest token is the end-of-sequence token (even when it is also the
       row's last allowed token, or completes a stop string);
    2. ``"stop"``: the newest token completed one of ``stops`` (even on the last allowed
       token); ``decode`` is called only when there are stop strings;
    3. ``"length"``: the row holds ``max_new_tokens`` tokens.
    """
    if eos_id is not None and generated and generated[-1] == eos_id:
        return "eos"
    if stops and ends_with_stop(decode, generated, stops):
        return "stop"
    if len(generated) >= max_new_tokens:
        return "length"
    return None


def ends_with_stop(
    decode: Callable[[list[int]], str], generated: Sequence[int], stops: Sequence[str]
) -> bool:
    """Whether the newest token completed a stop string.

    Engines check after every token, so only the tail needs decoding: a token is at least one
    byte and a character at most four, so the last 4 x (longest stop) + 4 tokens suffice.
    """
    window = 4 * max(len(s) for s in stops) + 4
    text = decode(list(generated[-window:]))
    return any(s in text for s in stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest stop string (stop strings are not part of an output)."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else text


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory (torch's ``OutOfMemoryError``,
    CTranslate2's "CUDA failed with error out of memory"), which a smaller batch avoids."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


class Decoder(Protocol):
    """A running decode batch that rows join and leave between steps: what continuous
    batching needs of an engine (see :meth:`Engine.decoder`). Items are told apart by identity
    (the same :class:`Prepared` object goes in and comes back out)."""

    @property
    def active_rows(self) -> int:
        """Rows (sequences) in the batch now."""
        ...

    def projected_tokens(self, joining: Sequence[Prepared] = ()) -> int:
        """Cache size (rows x positions) the batch may reach if ``joining`` join it now."""
        ...

    def add(self, items: Sequence[Prepared]) -> list[tuple[Prepared, Generation]]:
        """Prefill ``items`` into the batch; return those already finished."""
        ...

    def step(self) -> list[tuple[Prepared, Generation]]:
        """One forward pass for every active row; return the items that finished."""
        ...

    def drop(self, job_ids: set[str]) -> list[Prepared]:
        """Remove the items of ``job_ids`` (ended jobs) from the batch; return them."""
        ...

    def clear(self) -> list[Prepared]:
        """Remove every item (after a failed step, or at shutdown); return them."""
        ...


class Engine(Protocol):
    """A text-generation backend.

    Every engine class has ``@classmethod load(cls, settings: Settings) -> Self``, which loads
    its model once (see :class:`EngineClass`); :func:`genq.worker.engines.load_engine` picks
    the class by ``settings.engine`` and calls it.

    Optional capabilities are declared here, not probed: an engine without continuous
    batching returns None from :meth:`decoder`; one with no device memory to give back makes
    :meth:`release_memory` a no-op.
    """

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

    def decoder(self) -> Decoder | None:
        """A new continuous decode batch over this engine's model, or None when the engine
        only runs static batches (:meth:`generate`)."""
        ...

    def release_memory(self) -> None:
        """Give cached device memory back after an out-of-memory error, before a smaller
        retry (a no-op where there is none)."""
        ...


class EngineClass(Protocol):
    """An engine class, as the engine table names it: what :meth:`load` returns is ready."""

    def load(self, settings: Settings) -> Engine:
        """Load the engine's model once, as ``settings`` configure it."""
        ...
