"""The ``null`` engine with outputs of a chosen length, so that stored results weigh what real
ones do (the ``null`` engine itself returns empty outputs). Bench only: a worker runs it through
``python -m bench.scaling.text_engine worker``, which points GENQ_ENGINE=null at this class and
then runs ``genq worker`` unchanged: the queue path, the result writes and the reads are genq's.

``BENCH_OUTPUT_CHARS`` sets the characters of each output (default 64: about 16 GPT-2 tokens
of English); the text is English prose cut from this repository's docs at an offset drawn from
the item's index, so that it compresses as prose does rather than as one repeated string.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared
from genq.worker.engines.null import NullEngine

ROOT = Path(__file__).resolve().parents[2]
CHARS_PER_TOKEN = 4  # GPT-2 on English prose, roughly


@cache
def corpus() -> str:
    """English prose: the repository's Markdown, whitespace folded, ASCII only."""
    texts = [p.read_text(errors="replace") for p in sorted((ROOT / "docs").glob("*.md"))]
    texts.append((ROOT / "README.md").read_text(errors="replace"))
    text = " ".join(" ".join(texts).split())
    return text.encode("ascii", "ignore").decode()


def output_text(index: int, chars: int) -> str:
    text = corpus()
    if chars <= 0:
        return ""
    start = (index * 7919) % max(1, len(text) - chars)
    piece = text[start : start + chars]
    while len(piece) < chars:  # outputs longer than the corpus
        piece += " " + text[: chars - len(piece) - 1]
    return piece


class TextEngine(NullEngine):
    """:class:`NullEngine` whose outputs hold ``chars`` characters of prose."""

    chars = 64

    @classmethod
    def load(cls, settings: Settings) -> TextEngine:
        engine = cls(batch_ms=settings.null_batch_ms)
        engine.chars = int(os.environ.get("BENCH_OUTPUT_CHARS", "64"))
        corpus()
        return engine

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        generations = super().generate(batch)
        tokens = max(0, self.chars // CHARS_PER_TOKEN)
        for prepared, generation in zip(batch, generations, strict=True):
            generation.outputs = [output_text(prepared.item.index, self.chars)] * prepared.rows
            generation.completion_tokens = tokens * prepared.rows
            generation.token_counts = [tokens] * prepared.rows
        return generations


def main() -> None:
    """``genq`` with GENQ_ENGINE=null meaning :class:`TextEngine` (run as ``... worker``)."""
    from genq.producer.cli import main as genq_main
    from genq.worker import engines

    engines.ENGINES["null"] = "bench.scaling.text_engine:TextEngine"
    sys.argv[0] = "genq"
    genq_main()


if __name__ == "__main__":
    main()
