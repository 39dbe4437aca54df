"""The soak's clock and timeline: each event (a worker started or stopped, Redis killed...)
with the second it happened, echoed to stderr at once and kept for soak.json."""

from __future__ import annotations

import time
from typing import Any

import click


class Timeline:
    """Seconds since the soak started, and the events so far."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, **fields: Any) -> None:
        entry = {"t": round(self.now(), 2), "event": kind, **fields}
        self.events.append(entry)
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        click.echo(f"[{entry['t']:8.1f}s] {kind} {details}".rstrip(), err=True)


def round2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
