"""The chaos: which worker is stopped when, with which signal, and the one Redis restart.

A serving worker (never a steady one) is stopped every ``--kill-every-s`` x 0.5-1.5 seconds,
with SIGTERM for a ``--sigterm-share`` of the stops and SIGKILL otherwise, and replaced at once.
Redis is SIGKILLed once, when ``--redis-at`` of the items are done, and restarted on the same
port and data directory ``--redis-down-s`` later. The choices come from one seeded generator,
so a run's schedule depends only on --seed and on how the run goes.
"""

from __future__ import annotations

import random
import signal

from bench.soak.options import Options
from bench.soak.processes import Workers
from bench.soak.timeline import Timeline
from genq.devtools.redis_server import RedisProcess


class Chaos:
    def __init__(
        self, opts: Options, workers: Workers, server: RedisProcess, timeline: Timeline
    ) -> None:
        self.opts = opts
        self.workers = workers
        self.server = server
        self.timeline = timeline
        self.rng = random.Random(opts.seed)
        self.redis_killed_t: float | None = None
        self.redis_back_t: float | None = None

    def next_kill_delay(self) -> float:
        return self.rng.uniform(0.5, 1.5) * self.opts.kill_every_s

    def stop_a_worker(self) -> None:
        """Stop one serving worker chosen at random, and start its replacement."""
        candidates = [run for run in self.workers.serving() if not run.steady]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        sig = signal.SIGTERM if self.rng.random() < self.opts.sigterm_share else signal.SIGKILL
        self.workers.stop(victim, sig)
        self.workers.start(f"replaces {victim.name}")

    @property
    def redis_restarted(self) -> bool:
        return self.redis_back_t is not None

    def redis(self, done: int) -> None:
        """Kill Redis once ``done`` items reach the --redis-at share; restart it once it has
        been down --redis-down-s."""
        if self.redis_killed_t is None and done >= self.opts.redis_at * self.opts.items:
            self.server.kill()
            self.redis_killed_t = self.timeline.now()
            self.timeline.event("redis_sigkill", port=self.server.port, done=done)
        elif (
            self.redis_killed_t is not None
            and self.redis_back_t is None
            and self.timeline.now() - self.redis_killed_t >= self.opts.redis_down_s
        ):
            self.server.start()
            self.redis_back_t = self.timeline.now()
            self.timeline.event("redis_restarted", port=self.server.port)

    def redis_down_s(self) -> float | None:
        """How long Redis was down (killed to answering again); None if it was not restarted."""
        if self.redis_back_t is None or self.redis_killed_t is None:
            return None
        return round(self.redis_back_t - self.redis_killed_t, 2)
