"""The soak itself: the workload (one job of unique prompts, a model), and the main loop that
submits it and drives the chaos and the sampling until the job ends (or the timeout)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import click

from bench.soak.chaos import Chaos
from bench.soak.options import Options
from bench.soak.processes import Workers, worker_env
from bench.soak.sampling import Sampler
from bench.soak.timeline import Timeline
from bench.workloads import WORDS
from genq.devtools.redis_server import RedisProcess
from genq.producer.client import Client
from genq.settings import Settings

# Prompt lengths in words (~4.5 tokens each with the tiny model's tokenizer): up to ~160
# tokens, so that 64 new tokens still fit its 256-token context.
PROMPT_WORDS = (1, 2, 4, 8, 16, 24, 32)
LOOP_S = 0.1
PROGRESS_S = 10.0


def make_prompts(n: int, seed: int) -> list[str]:
    """Unique prompts of varied lengths (each names its index, so a mix-up shows)."""
    rng = random.Random(seed)
    return [
        f"Item {i}: write about "
        + " ".join(rng.choice(WORDS) for _ in range(rng.choice(PROMPT_WORDS)))
        for i in range(n)
    ]


def ensure_model(model: str | None, scratch: Path) -> str:
    if model:
        return model
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    target = scratch / "tiny-gpt2"
    click.echo(f"building a tiny random-weight GPT-2 in {target}", err=True)
    return str(build_random_gpt2(target, PRESETS["tiny"]))


class Soak:
    """One soak run: its workers, chaos and samples, and what the report needs of the job."""

    def __init__(self, opts: Options, server: RedisProcess, model: str) -> None:
        self.opts = opts
        self.server = server
        self.model = model
        self.timeline = Timeline()
        self.settings = Settings(
            redis_url=server.url,
            heartbeat_s=opts.heartbeat_s,
            lease_s=opts.lease_s,
            chunk_size=opts.chunk_size,
            max_items_per_job=max(opts.items, 1),
        )
        self.client = Client(settings=self.settings)
        env = worker_env(server.url, model, opts.lease_s, opts.heartbeat_s, opts.torch_threads)
        self.workers = Workers(self.timeline, env, opts.out / "logs", opts.term_grace_s)
        self.chaos = Chaos(opts, self.workers, server, self.timeline)
        self.sampler = Sampler(self.timeline, self.workers, self.client, self.settings)
        self.prompts: list[str] = []
        self.job_id: str | None = None
        self.submit_t = 0.0
        self.elapsed_s = 0.0  # from the submit to the end of the job (or the timeout)
        self.timed_out = False

    def run(self) -> None:
        """Start the workers, submit the job, and run the chaos and the samples until the job
        has ended and Redis is up."""
        opts, timeline, workers = self.opts, self.timeline, self.workers
        chaos, sampler = self.chaos, self.sampler
        first = [workers.start("initial") for _ in range(opts.workers)]
        first += [workers.start("steady", steady=True) for _ in range(opts.steady_workers)]
        workers.wait_ready(first)
        self.prompts = make_prompts(opts.items, opts.seed)
        job_id = self.client.submit(self.prompts, {"max_new_tokens": opts.max_new_tokens})
        self.job_id = job_id
        self.submit_t = timeline.now()
        timeline.event("submitted", job_id=job_id, items=opts.items)
        next_kill = timeline.now() + chaos.next_kill_delay()
        next_sample = 0.0
        next_progress = PROGRESS_S
        while True:
            workers.check(replace_dead=sampler.job_running())
            if sampler.job_running():
                if timeline.now() >= next_kill:
                    chaos.stop_a_worker()
                    next_kill = timeline.now() + chaos.next_kill_delay()
                if not chaos.redis_restarted:
                    chaos.redis(sampler.done())
            elif not chaos.redis_restarted and chaos.redis_killed_t is not None:
                chaos.redis(sampler.done())
            if timeline.now() >= next_sample:
                sampler.sample(job_id)
                next_sample = timeline.now() + opts.sample_s
                if not sampler.job_running() and self.server.running:
                    break  # the job ended, and Redis is up (restarted if it was killed)
            if timeline.now() >= next_progress:
                click.echo(
                    f"[{timeline.now():8.1f}s] progress {sampler.done()}/{opts.items} "
                    f"workers={len(workers.serving())} kills={sum(workers.kills.values())}",
                    err=True,
                )
                next_progress += PROGRESS_S
            if timeline.now() - self.submit_t > opts.timeout_s:
                self.timed_out = True
                timeline.event("timeout", after_s=opts.timeout_s)
                break
            time.sleep(LOOP_S)
        self.elapsed_s = timeline.now() - self.submit_t
        info = sampler.last_info
        timeline.event("job_end", status=info.status.value if info else None)
        workers.sample_memory(timeline.now())
