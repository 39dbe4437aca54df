"""The ``null`` engine: no model. Returns empty outputs at once, to measure the queue path alone."""

from __future__ import annotations

from collections.abc import Sequence

from genq.worker.engines.base import Generation, Prepared


class NullEngine:
    name = "null"
    model_name = "none"
    device = "cpu"
    max_context: int | None = None

    def encode(self, text: str) -> list[int]:
        # One "token" per UTF-8 byte: cheap, deterministic, and never empty for a prompt.
        return list(text.encode())

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
