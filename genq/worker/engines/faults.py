"""Fault injection for reliability drills: wraps any engine and makes chosen items fail.

Enabled only by ``GENQ_FAULTS`` (a JSON :class:`FaultPlan`); the fault-injection tests and the
soak run use it to make a real engine raise, run out of memory, or run slowly, for the items
whose prompt contains a marker, without patching genq's code.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from genq.schema import ChatMessage
from genq.worker.engines.base import Decoder, Engine, Generation, Prepared


class InjectedFault(RuntimeError):
    """The error a fault plan raises for a chosen item."""


class InjectedOutOfMemory(InjectedFault):
    """Stands in for ``torch.cuda.OutOfMemoryError`` (its name and message say out of memory)."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"CUDA out of memory (injected: a batch of {rows} rows)")


class InjectedCrash(BaseException):
    """A bug in the engine loop itself (not a per-item failure): the worker must stop."""


class FaultPlan(BaseModel):
    """Which items fail, and how. Markers are matched as substrings of the prompt."""

    model_config = ConfigDict(extra="forbid")

    raise_on: list[str] = Field(default_factory=list)  # the engine raises for these items...
    raise_times: int | None = Field(None, ge=1)  # ...this many times each (None: always)
    oom_on: list[str] = Field(default_factory=list)  # out of memory in a batch of these items...
    oom_above_rows: int = Field(1, ge=0)  # ...when the batch has more rows than this
    delay_s: float = Field(0.0, ge=0)  # every generate call / decode step takes this much longer
    die_on: list[str] = Field(default_factory=list)  # the process is SIGKILLed on these items
    crash_on: list[str] = Field(default_factory=list)  # the engine loop itself fails on these


class FaultyEngine:
    """An engine that behaves like ``inner`` except where its :class:`FaultPlan` says."""

    def __init__(self, inner: Engine, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self.model_name = inner.model_name
        self.device = inner.device
        self.max_context = inner.max_context
        self.raised: Counter[tuple[str, int]] = Counter()

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def render_chat(self, messages: Sequence[ChatMessage], template: str | None = None) -> str:
        return self.inner.render_chat(messages, template)

    def warmup(self) -> None:
        self.inner.warmup()

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        self.check(batch, rows=sum(p.rows for p in batch))
        if self.plan.delay_s:
            time.sleep(self.plan.delay_s)
        return self.inner.generate(batch)

    def check(self, batch: Sequence[Prepared], rows: int) -> None:
        """Raise the fault the plan holds for ``batch`` (of ``rows`` rows in all), if any."""
        if any(self._marked(p, self.plan.die_on) for p in batch):
            # A crash no exception handler sees, as a CUDA fault or the OOM killer would be.
            os.kill(os.getpid(), signal.SIGKILL)
        if any(self._marked(p, self.plan.crash_on) for p in batch):
            raise InjectedCrash(f"injected engine-loop crash on a batch of {rows} rows")
        if rows > self.plan.oom_above_rows and any(
            self._marked(p, self.plan.oom_on) for p in batch
        ):
            raise InjectedOutOfMemory(rows)
        for p in batch:
            if not self._marked(p, self.plan.raise_on):
                continue
            key = (p.job_id, p.item.index)
            if self.plan.raise_times is None or self.raised[key] < self.plan.raise_times:
                self.raised[key] += 1
                raise InjectedFault(f"injected fault for item {p.item.index}")

    def release_memory(self) -> None:
        self.inner.release_memory()

    def decoder(self) -> FaultyDecoder | None:
        inner = self.inner.decoder()
        return None if inner is None else FaultyDecoder(inner, self)

    @staticmethod
    def _marked(p: Prepared, markers: list[str]) -> bool:
        return any(marker in p.item.prompt for marker in markers)


class FaultyDecoder:
    """A continuous decoder that raises when a marked item joins it, and steps slowly; the
    rest of :class:`Decoder` passes straight to ``inner``."""

    def __init__(self, inner: Decoder, engine: FaultyEngine) -> None:
        self.inner = inner
        self.engine = engine

    @property
    def active_rows(self) -> int:
        return self.inner.active_rows

    def projected_tokens(self, joining: Sequence[Prepared] = ()) -> int:
        return self.inner.projected_tokens(joining)

    def add(self, items: Sequence[Prepared]) -> list[tuple[Prepared, Generation]]:
        self.engine.check(items, rows=self.inner.active_rows + sum(p.rows for p in items))
        return self.inner.add(items)

    def step(self) -> list[tuple[Prepared, Generation]]:
        if self.engine.plan.delay_s:
            time.sleep(self.engine.plan.delay_s)
        return self.inner.step()

    def drop(self, job_ids: set[str]) -> list[Prepared]:
        return self.inner.drop(job_ids)

    def clear(self) -> list[Prepared]:
        return self.inner.clear()
