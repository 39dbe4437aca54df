"""The soak itself: the workload (its jobs, bench.soak.jobs; a model), and the main loop that
submits them and drives the chaos and the sampling until every job ends (or the timeout)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from bench.soak.chaos import Chaos
from bench.soak.jobs import PROMPT_WORDS, Job, make_prompts, plan_jobs, set_weights, submit
from bench.soak.options import Options
from bench.soak.processes import Workers, worker_env
from bench.soak.sampling import Sampler
from bench.soak.timeline import Timeline
from genq.devtools.redis_server import RedisProcess
from genq.errors import BrokerUnavailableError
from genq.producer.client import Client
from genq.settings import Settings

__all__ = ["PROMPT_WORDS", "Soak", "ensure_model", "make_prompts"]

LOOP_S = 0.1
PROGRESS_S = 10.0


def ensure_model(model: str | None, scratch: Path) -> str:
    if model:
        return model
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    target = scratch / "tiny-gpt2"
    click.echo(f"building a tiny random-weight GPT-2 in {target}", err=True)
    return str(build_random_gpt2(target, PRESETS["tiny"]))


class Soak:
    """One soak run: its workers, jobs, chaos and samples, and what the report needs."""

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
        self.jobs: list[Job] = plan_jobs(opts.items, opts.jobs, opts.seed)
        self.sampler = Sampler(self.timeline, self.workers, self.client, self.settings, self.jobs)
        self.submit_t = 0.0  # of the first jobs
        self.elapsed_s = 0.0  # from the first submit to the end of the last job (or timeout)
        self.timed_out = False

    @property
    def job_id(self) -> str | None:
        """The first job's id (the only one's by default)."""
        return self.jobs[0].job_id

    @property
    def prompts(self) -> list[str]:
        return [p for job in self.jobs for p in job.prompts]

    def running(self) -> bool:
        """Some job is still to be submitted, or has not ended."""
        return not all(job.ended for job in self.jobs)

    def redis_down(self) -> bool:
        chaos = self.chaos
        return chaos.redis_killed_t is not None and not chaos.redis_restarted

    def submit(self, job: Job) -> None:
        params = {"max_new_tokens": self.opts.max_new_tokens}
        job_id = submit(self.client, job, params, self.timeline.now)
        fields = job.describe() if len(self.jobs) > 1 else {"items": job.items}
        fields.pop("late", None)
        self.timeline.event("submitted", job_id=job_id, **fields)

    def submit_late(self) -> None:
        """Submit each late job once its share of the items is done (or once every job so far
        has ended), while Redis is up and was reachable at the last sample."""
        if self.redis_down() or self.sampler.broker_down_since is not None:
            return
        submitted = [job for job in self.jobs if job.submitted]
        idle = all(job.ended for job in submitted)
        for job in self.jobs:
            if job.submitted or job.late_at is None:
                continue
            if idle or self.sampler.done() >= job.late_at * self.opts.items:
                try:
                    self.submit(job)
                except BrokerUnavailableError as e:  # tried again (same idempotency key)
                    self.timeline.event("submit_failed", job=job.number, error=str(e)[:200])
                return  # one at a time

    def note_ends(self) -> None:
        """The time each job was first seen ended (a timeline event with several jobs)."""
        for job in self.jobs:
            if job.ended and job.end_t is None:
                job.end_t = self.timeline.now()
                if len(self.jobs) > 1 and job.info is not None and job.submit_t is not None:
                    self.timeline.event(
                        "job_end",
                        job=job.number,
                        job_id=job.job_id,
                        status=job.info.status.value,
                        after_s=round(job.end_t - job.submit_t, 1),
                    )

    def start(self) -> None:
        """Start the workers, wait until they are ready, and submit the first jobs."""
        opts, workers = self.opts, self.workers
        first = [workers.start("initial") for _ in range(opts.workers)]
        first += [workers.start("steady", steady=True) for _ in range(opts.steady_workers)]
        workers.wait_ready(first)
        set_weights(self.client, self.jobs)
        for job in self.jobs:
            if job.late_at is None:
                self.submit(job)
        assert self.jobs[0].submit_t is not None
        self.submit_t = self.jobs[0].submit_t

    def run(self) -> None:
        """Start the workers, submit the jobs, and run the chaos and the samples until every
        job has ended and Redis is up."""
        opts, timeline, workers = self.opts, self.timeline, self.workers
        chaos, sampler = self.chaos, self.sampler
        self.start()
        next_kill = timeline.now() + chaos.next_kill_delay()
        next_sample = 0.0
        next_progress = PROGRESS_S
        while True:
            running = self.running()
            workers.check(replace_dead=running)
            if running:
                if timeline.now() >= next_kill:
                    chaos.stop_a_worker()
                    next_kill = timeline.now() + chaos.next_kill_delay()
                if not chaos.redis_restarted:
                    chaos.redis(sampler.done())
            elif not chaos.redis_restarted and chaos.redis_killed_t is not None:
                chaos.redis(sampler.done())
            self.submit_late()
            if timeline.now() >= next_sample:
                sampler.sample()
                self.note_ends()
                next_sample = timeline.now() + opts.sample_s
                if not self.running() and self.server.running:
                    break  # every job ended, and Redis is up (restarted if it was killed)
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
        if len(self.jobs) == 1:
            info = self.jobs[0].info
            timeline.event("job_end", status=info.status.value if info else None)
        workers.sample_memory(timeline.now())
