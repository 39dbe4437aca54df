"""The settings of one soak run (the command's options, resolved)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Options:
    items: int
    jobs: int  # the --items split into this many jobs (bench.soak.jobs)
    workers: int
    steady_workers: int
    model: str | None
    lease_s: int
    heartbeat_s: float
    max_new_tokens: int
    chunk_size: int
    kill_every_s: float
    sigterm_share: float
    redis_at: float
    redis_down_s: float
    term_grace_s: float
    torch_threads: int
    sample_s: float
    seed: int
    timeout_s: float
    out: Path
