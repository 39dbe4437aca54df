"""Deterministic benchmark workloads: what a content pipeline sends."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

WORDS = [
    "product",
    "description",
    "marketing",
    "copy",
    "quarterly",
    "report",
    "summary",
    "customer",
    "brand",
    "launch",
    "water",
    "bottle",
    "running",
    "shoes",
    "coffee",
    "bakery",
    "subscription",
    "revenue",
    "growth",
    "region",
    "team",
    "design",
    "quality",
    "delivery",
    "price",
    "offer",
    "season",
    "winter",
    "summer",
    "premium",
    "comfort",
    "lightweight",
    "durable",
    "sustainable",
    "natural",
    "fresh",
    "modern",
    "classic",
    "elegant",
    "simple",
    "powerful",
    "smart",
    "fast",
]

SAMPLING: dict[str, Any] = {"do_sample": True, "top_k": 50, "top_p": 0.95}
STOPS = [["\n\n"], ["."], ["###"]]


@dataclass(frozen=True)
class Workload:
    name: str
    items: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)

    def item_params(self, item: dict[str, Any]) -> dict[str, Any]:
        return {**self.params, **item.get("params", {})}


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def uniform(n: int, max_new_tokens: int = 32, seed: int = 0) -> Workload:
    """Short prompts (about 8-16 tokens), one fixed max_new_tokens, sampling."""
    rng = random.Random(seed)
    items = [{"prompt": f"Write about {_text(rng, rng.randint(6, 12))}:"} for _ in range(n)]
    return Workload("uniform", items, {"max_new_tokens": max_new_tokens, **SAMPLING})


def mixed(n: int, seed: int = 0) -> Workload:
    """Prompts from a few tokens to ~400, max_new_tokens 8-128, some stop strings."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        words = int(rng.choice([2, 5, 10, 20, 40, 80, 160, 300]) * rng.uniform(0.8, 1.2))
        params: dict[str, Any] = {"max_new_tokens": rng.choice([8, 16, 32, 64, 128])}
        if rng.random() < 0.3:
            params["stop"] = rng.choice(STOPS)
        items.append({"prompt": f"Summarise: {_text(rng, max(words, 1))}", "params": params})
    return Workload("mixed", items, dict(SAMPLING))


WORKLOADS = {"uniform": uniform, "mixed": mixed}
