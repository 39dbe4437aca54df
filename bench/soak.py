"""Reliability soak: one big job survives workers killed at random and a Redis restart.

What it proves: during one job of 10,000 items, `genq worker` processes are stopped at random
times (SIGKILL mostly, SIGTERM sometimes) and replaced, and the Redis server itself is killed
once, mid-job, and restarted on the same port and data directory (append-only persistence, so a
restart loses no accepted write). At the end every item must have exactly one result: none
lost, none recorded twice, counters equal to the number of results; the report adds how much
work was generated more than once (re-runs after a lost worker), failed items by error type,
and each worker's memory (RSS) over time.

    python -m bench.soak                                   # 10,000 items, 2 workers: 3-6 min
    python -m bench.soak --items 500 --timeout-s 300       # a quick run
    python -m bench.soak --steady-workers 1                # + a worker never stopped (memory)

Everything is local and private: its own redis-server on a free port, a tiny random-weight
GPT-2 (genq.devtools.random_model, preset "tiny") unless --model is given, and `genq worker`
subprocesses. Prints a report and writes soak.json (settings, figures, timeline, samples),
rss.png (when matplotlib is installed: `pip install -e '.[bench]'`) and every log under --out.
Exit status 0 only when the job completed with no item lost, none duplicated and none mixed up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import redis

from bench.workloads import WORDS
from genq import keyspace
from genq.errors import BrokerUnavailableError, JobNotFoundError
from genq.producer.client import Client
from genq.schema import ItemResult, JobInfo, JobStatus
from genq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"genq worker (\S+) ready: engine=")
WORKER_READY_TIMEOUT_S = 300.0
REDIS_START_TIMEOUT_S = 60.0
RETRY_S = 60.0  # how long end-of-run reads keep retrying an unreachable Redis
# Prompt lengths in words (~4.5 tokens each with the tiny model's tokenizer): up to ~160
# tokens, so that 64 new tokens still fit its 256-token context.
PROMPT_WORDS = (1, 2, 4, 8, 16, 24, 32)
UNLISTED_SAMPLES = 5  # a serving worker missing from `genq workers` this many samples in a row
COUNTER_GRACE_S = 10.0  # keep reading a stopped worker's counters this long (record TTL ~4 s)

T = TypeVar("T")


# --- processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In a child before exec (Linux): be killed if the soak itself dies without cleaning up."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


PREEXEC = die_with_parent if sys.platform.startswith("linux") else None


def proc_memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a live process in MiB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    if "VmRSS" not in values:
        return None  # a zombie
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


class RedisServer:
    """A private redis-server with append-only persistence; can be killed and restarted."""

    def __init__(self, directory: Path, log: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise click.ClickException("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                    "--dir",
                    str(self.directory),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=PREEXEC,
            )
        probe = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        try:
            while True:
                try:
                    probe.ping()
                    return
                except redis.exceptions.ConnectionError:  # refused, or still loading the AOF
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise click.ClickException(
                            f"redis-server did not start; see {self.log}"
                        ) from None
                    time.sleep(0.05)
        finally:
            probe.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None


@dataclass
class WorkerRun:
    """One `genq worker` process (a replacement is a new run)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started_t: float
    ready_t: float | None = None
    worker_id: str | None = None
    stop_signal: str | None = None  # SIGKILL / SIGTERM when the soak stopped it
    stop_t: float | None = None
    exit_t: float | None = None
    exit_code: int | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)
    peak_hwm_mb: float = 0.0
    steady: bool = False  # never stopped by the chaos (--steady-workers)
    unlisted_streak: int = 0  # samples in a row in which `genq workers` did not list it
    unlisted_events: int = 0
    _log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.exit_t is None

    def scan_log(self) -> None:
        """Pick up the worker id and readiness from the log lines written since the last scan."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n") + 1  # whole lines only
        self._log_offset += cut
        match = READY_LINE.search(chunk[:cut].decode(errors="replace"))
        if match and self.worker_id is None:
            self.worker_id = match.group(1)

    def sample_memory(self, t: float) -> None:
        memory = proc_memory_mb(self.pid)
        if memory is not None:
            self.rss.append((round(t, 2), round(memory[0], 1)))
            self.peak_hwm_mb = max(self.peak_hwm_mb, memory[1])

    def rss_at_ready(self) -> float | None:
        """The first RSS sample once the model is loaded: the base that growth counts from."""
        if self.ready_t is None:
            return None
        return next((m for t, m in self.rss if t >= self.ready_t), None)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "worker_id": self.worker_id,
            "started_t": _r(self.started_t),
            "ready_t": _r(self.ready_t),
            "stop_signal": self.stop_signal,
            "stop_t": _r(self.stop_t),
            "exit_t": _r(self.exit_t),
            "exit_code": self.exit_code,
            "rss_peak_mb": round(max((m for _, m in self.rss), default=0.0), 1),
            "rss_hwm_mb": round(self.peak_hwm_mb, 1),
            "rss_at_ready_mb": self.rss_at_ready(),
            "rss_final_mb": self.rss[-1][1] if self.rss else None,
            "steady": self.steady,
            "unlisted_events": self.unlisted_events,
            "log": str(self.log),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --- the workload ------------------------------------------------------------------------------
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


# --- the soak ----------------------------------------------------------------------------------
@dataclass
class Options:
    items: int
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


class Soak:
    """Runs the job, the chaos and the sampling; collects what the report needs."""

    def __init__(self, opts: Options, redis_server: RedisServer, model: str) -> None:
        self.opts = opts
        self.redis_server = redis_server
        self.model = model
        self.rng = random.Random(opts.seed)
        self.t0 = time.monotonic()
        self.runs: list[WorkerRun] = []
        self.timeline: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.settings = Settings(
            redis_url=redis_server.url,
            heartbeat_s=opts.heartbeat_s,
            lease_s=opts.lease_s,
            chunk_size=opts.chunk_size,
            max_items_per_job=max(opts.items, 1),
        )
        self.client = Client(settings=self.settings)
        self.job_id: str | None = None
        self.submit_t = 0.0
        self.last_info: JobInfo | None = None
        self.kills = Counter[str]()
        self.unexpected_exits = 0
        self.redis_killed_t: float | None = None
        self.redis_back_t: float | None = None
        self.broker_down_since: float | None = None
        self.broker_outages: list[tuple[float, float]] = []
        # worker id -> [items counted before a counter reset, latest counter value, resets]
        self.counters: dict[str, list[int]] = {}
        self.job_missing_samples = 0

    # --- bookkeeping ----------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, **fields: Any) -> None:
        entry = {"t": round(self.now(), 2), "event": kind, **fields}
        self.timeline.append(entry)
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        click.echo(f"[{entry['t']:8.1f}s] {kind} {details}".rstrip(), err=True)

    # --- workers --------------------------------------------------------------------------
    def worker_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "GENQ_REDIS_URL": self.redis_server.url,
            "GENQ_MODEL": self.model,
            "GENQ_DEVICE": "cpu",
            "GENQ_LEASE_S": str(self.opts.lease_s),
            "GENQ_HEARTBEAT_S": str(self.opts.heartbeat_s),
            "PYTHONUNBUFFERED": "1",
        }
        if self.opts.torch_threads > 0:
            threads = str(self.opts.torch_threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    def start_worker(self, reason: str, steady: bool = False) -> WorkerRun:
        name = f"w{len(self.runs) + 1}"
        log = self.opts.out / "logs" / f"worker-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.worker_env(),
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the soak only; it stops them in order
                preexec_fn=PREEXEC,
            )
        run = WorkerRun(name, process, log, self.now(), steady=steady)
        self.runs.append(run)
        self.event("worker_start", worker=name, pid=process.pid, reason=reason, steady=steady)
        return run

    def live(self) -> list[WorkerRun]:
        return [r for r in self.runs if r.running]

    def serving(self) -> list[WorkerRun]:
        """Workers that are ready and not being stopped: the ones chaos may pick."""
        return [r for r in self.live() if r.ready_t is not None and r.stop_signal is None]

    def stop_worker(self, run: WorkerRun, sig: signal.Signals) -> None:
        run.sample_memory(self.now())
        run.stop_signal = sig.name
        run.stop_t = self.now()
        with contextlib.suppress(ProcessLookupError):
            run.process.send_signal(sig)
        self.kills[sig.name] += 1
        self.event(sig.name.lower(), worker=run.name, pid=run.pid, worker_id=run.worker_id)

    def check_workers(self) -> None:
        """Readiness, exits (expected or not), overdue warm shutdowns."""
        for run in self.live():
            run.scan_log()
            if run.ready_t is None and run.worker_id is not None:
                run.ready_t = self.now()
                self.event("worker_ready", worker=run.name, worker_id=run.worker_id)
            code = run.process.poll()
            if code is not None:
                run.exit_t, run.exit_code = self.now(), code
                run.scan_log()
                if run.stop_signal is None:
                    self.unexpected_exits += 1
                    self.event("worker_died", worker=run.name, exit_code=code, log=str(run.log))
                    if self.job_running():
                        self.start_worker(f"replaces {run.name} (died)", run.steady)
                else:
                    self.event("worker_exit", worker=run.name, exit_code=code)
                continue
            if run.ready_t is None and self.now() - run.started_t > WORKER_READY_TIMEOUT_S:
                raise click.ClickException(f"worker {run.name} did not start; see {run.log}")
            overdue = run.stop_t is not None and self.now() - run.stop_t > self.opts.term_grace_s
            if run.stop_signal == "SIGTERM" and overdue:
                self.event("sigterm_overdue", worker=run.name, after_s=self.opts.term_grace_s)
                run.stop_signal = "SIGTERM+SIGKILL"
                with contextlib.suppress(ProcessLookupError):
                    run.process.kill()

    def job_running(self) -> bool:
        return self.last_info is None or not self.last_info.is_terminal

    def wait_ready(self, runs: list[WorkerRun]) -> None:
        while any(r.ready_t is None for r in runs):
            self.check_workers()
            if any(r.exit_t is not None and r.ready_t is None for r in runs):
                bad = next(r for r in runs if r.exit_t is not None)
                raise click.ClickException(f"worker {bad.name} exited at start; see {bad.log}")
            time.sleep(0.2)

    # --- chaos ----------------------------------------------------------------------------
    def next_kill_delay(self) -> float:
        return self.rng.uniform(0.5, 1.5) * self.opts.kill_every_s

    def chaos_worker(self) -> None:
        candidates = [run for run in self.serving() if not run.steady]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        sig = signal.SIGTERM if self.rng.random() < self.opts.sigterm_share else signal.SIGKILL
        self.stop_worker(victim, sig)
        self.start_worker(f"replaces {victim.name}")

    def chaos_redis(self, done: int) -> None:
        if self.redis_killed_t is None and done >= self.opts.redis_at * self.opts.items:
            self.redis_server.kill()
            self.redis_killed_t = self.now()
            self.event("redis_sigkill", port=self.redis_server.port, done=done)
        elif (
            self.redis_killed_t is not None
            and self.redis_back_t is None
            and self.now() - self.redis_killed_t >= self.opts.redis_down_s
        ):
            self.redis_server.start()
            self.redis_back_t = self.now()
            self.event("redis_restarted", port=self.redis_server.port)

    # --- sampling -------------------------------------------------------------------------
    def broker(self, ok: bool) -> None:
        t = self.now()
        if not ok and self.broker_down_since is None:
            self.broker_down_since = t
            self.event("redis_unreachable")
        elif ok and self.broker_down_since is not None:
            self.broker_outages.append((self.broker_down_since, t))
            self.event("redis_reachable", after_s=round(t - self.broker_down_since, 2))
            self.broker_down_since = None

    def count_worker_items(self, worker_id: str, items: int) -> None:
        """Keep a per-worker total across counter resets (a record re-created after Redis
        lost it starts again from zero)."""
        entry = self.counters.setdefault(worker_id, [0, 0, 0])
        if items < entry[1]:
            entry[0] += entry[1]
            entry[2] += 1
        entry[1] = items

    def check_listed(self, listed: set[str]) -> None:
        """Note serving workers that `genq workers` does not list (and when they return)."""
        for run in self.serving():
            if run.worker_id in listed:
                if run.unlisted_streak >= UNLISTED_SAMPLES:
                    self.event("worker_listed_again", worker=run.name, worker_id=run.worker_id)
                run.unlisted_streak = 0
                continue
            run.unlisted_streak += 1
            if run.unlisted_streak == UNLISTED_SAMPLES:
                run.unlisted_events += 1
                assert run.worker_id is not None
                try:  # what its record holds instead (evidence for the report)
                    record = self.client.store.redis.hgetall(keyspace.worker(run.worker_id))
                except redis.exceptions.RedisError:
                    record = None
                self.event(
                    "worker_unlisted",
                    worker=run.name,
                    worker_id=run.worker_id,
                    record=sorted(record) if isinstance(record, dict) else record,
                )

    def sample(self) -> None:
        assert self.job_id is not None
        t = self.now()
        row: dict[str, Any] = {"t": round(t, 2)}
        try:
            info = self.client.status(self.job_id)
            workers = self.client.workers()
            # Counters read from each known worker's hash as well: a worker whose record is
            # missing or partial is not listed by workers(), but its counter still moves.
            known = [
                run.worker_id
                for run in self.runs
                if run.worker_id is not None
                and (run.exit_t is None or t - run.exit_t < COUNTER_GRACE_S)
            ]
            r = self.client.store.redis
            with r.pipeline(transaction=False) as pipe:
                pipe.llen(keyspace.celery_prefix() + self.settings.queue)
                pipe.zcard(keyspace.celery_unacked_index())
                for worker_id in known:
                    pipe.hget(keyspace.worker(worker_id), "items")
                queued, unacked, *raw_items = pipe.execute()
        except (BrokerUnavailableError, redis.exceptions.RedisError):
            self.broker(False)
            row["redis"] = "unreachable"
        except JobNotFoundError:
            self.job_missing_samples += 1
            self.event("job_missing", job_id=self.job_id)
            row["redis"] = "job missing"
        else:
            self.broker(True)
            self.last_info = info
            items = {w.id: w.items for w in workers}
            for worker_id, value in zip(known, raw_items, strict=True):
                if value is not None:
                    items[worker_id] = max(items.get(worker_id, 0), int(value))
            for worker_id, value in items.items():
                self.count_worker_items(worker_id, value)
            self.check_listed({w.id for w in workers})
            row.update(
                status=info.status.value,
                completed=info.completed,
                failed=info.failed,
                queued_messages=queued,
                unacked_messages=unacked,
                workers=items,
                listed=len(workers),
            )
        rss = {}
        for run in self.live():
            run.sample_memory(t)
            if run.rss and run.rss[-1][0] == round(t, 2):
                rss[run.name] = run.rss[-1][1]
        row["rss_mb"] = rss
        self.samples.append(row)

    # --- the run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts = self.opts
        first = [self.start_worker("initial") for _ in range(opts.workers)]
        first += [self.start_worker("steady", steady=True) for _ in range(opts.steady_workers)]
        self.wait_ready(first)
        prompts = make_prompts(opts.items, opts.seed)
        self.job_id = self.client.submit(prompts, {"max_new_tokens": opts.max_new_tokens})
        self.submit_t = self.now()
        self.event("submitted", job_id=self.job_id, items=opts.items)
        next_kill = self.now() + self.next_kill_delay()
        next_sample = 0.0
        next_progress = 10.0
        timed_out = False
        while True:
            self.check_workers()
            done = self.last_info.done if self.last_info else 0
            if self.job_running():
                if self.now() >= next_kill:
                    self.chaos_worker()
                    next_kill = self.now() + self.next_kill_delay()
                if self.redis_back_t is None:
                    self.chaos_redis(done)
            elif self.redis_back_t is None and self.redis_killed_t is not None:
                self.chaos_redis(done)
            if self.now() >= next_sample:
                self.sample()
                next_sample = self.now() + opts.sample_s
                if not self.job_running() and self.redis_server.process is not None:
                    break  # the job ended, and Redis is up (restarted if it was killed)
            if self.now() >= next_progress:
                info = self.last_info
                click.echo(
                    f"[{self.now():8.1f}s] progress {info.done if info else 0}/{opts.items} "
                    f"workers={len(self.serving())} kills={sum(self.kills.values())}",
                    err=True,
                )
                next_progress += 10.0
            if self.now() - self.submit_t > opts.timeout_s:
                timed_out = True
                self.event("timeout", after_s=opts.timeout_s)
                break
            time.sleep(0.1)
        elapsed = self.now() - self.submit_t
        self.event("job_end", status=self.last_info.status.value if self.last_info else None)
        for run in self.live():
            run.sample_memory(self.now())
        return self.verify(prompts, elapsed, timed_out)

    # --- the verdict ----------------------------------------------------------------------
    def longest_stall(self) -> float:
        """Longest time, after the submit, in which no item got a result (the wait for leases
        of killed workers to expire, Redis being away, no worker ready...)."""
        longest, since, last_done = 0.0, self.submit_t, -1
        for row in self.samples:
            if "completed" not in row:
                continue
            done = row["completed"] + row["failed"]
            if done != last_done:
                longest = max(longest, row["t"] - since)
                since, last_done = row["t"], done
        return round(longest, 1)

    def retry(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                return call()
            except (BrokerUnavailableError, redis.exceptions.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def verify(self, prompts: list[str], elapsed: float, timed_out: bool) -> dict[str, Any]:
        assert self.job_id is not None
        job_id = self.job_id
        total = len(prompts)
        r = self.client.store.redis
        try:
            info = self.retry(lambda: self.client.status(job_id))
            results: list[ItemResult] = self.retry(lambda: list(self.client.iter_results(job_id)))
            fields = [str(k) for k in self.retry(lambda: r.hkeys(keyspace.results(job_id)))]
        except JobNotFoundError:
            info, results, fields = None, [], []
        queued = self.retry(lambda: r.llen(keyspace.celery_prefix() + self.settings.queue))
        unacked = self.retry(lambda: r.zcard(keyspace.celery_unacked_index()))

        seen = Counter(res.index for res in results)
        field_counts = Counter(fields)
        expected = {str(i) for i in range(total)}
        stray_fields = sorted(set(field_counts) - expected)
        lost_indexes = sorted(i for i in range(total) if i not in seen)
        dup_indexes = sorted(i for i, c in seen.items() if c > 1)
        counted = info.completed + info.failed if info else 0
        duplicates = {
            "indexes_seen_twice": len(dup_indexes),
            "counters_over_results": max(0, counted - len(seen)),
            "results_fields_over_total": max(0, len(fields) - total),
        }
        mismatched = [
            res.index
            for res in results
            if res.index >= total
            or res.prompt != prompts[res.index]
            or res.custom_id != str(res.index)
        ]
        errors = Counter(res.error.type for res in results if res.error is not None)
        by_worker = Counter(res.worker_id or "?" for res in results)
        # Worker counters count generated items (rejected ones, e.g. too long, are not): the
        # excess over the results each worker holds is work done again after a lost worker
        # (a result written twice keeps the first). Counts a killed worker moved in its last
        # second, or that a re-registration zeroed, are missed: a lower bound.
        generated_ok = Counter(res.worker_id or "?" for res in results if res.ok)
        generated = {wid: base + last for wid, (base, last, _) in self.counters.items()}
        counter_resets = sum(entry[2] for entry in self.counters.values())
        excess = {
            wid: generated.get(wid, 0) - generated_ok.get(wid, 0)
            for wid in set(generated) | set(generated_ok)
        }
        reruns_by_worker = {wid: n for wid, n in excess.items() if n > 0}
        uncounted = -sum(n for n in excess.values() if n < 0)
        workers = [run.summary() for run in self.runs]
        lost = len(lost_indexes)
        duplicated = sum(duplicates.values())
        completed = info is not None and info.status is JobStatus.COMPLETED
        ok = completed and not timed_out and lost == 0 and duplicated == 0 and not mismatched
        outage = (
            round(self.redis_back_t - self.redis_killed_t, 2)
            if self.redis_back_t is not None and self.redis_killed_t is not None
            else None
        )
        return {
            "ok": ok,
            "job_id": job_id,
            "status": info.status.value if info else "missing",
            "timed_out": timed_out,
            "elapsed_s": round(elapsed, 1),
            "items_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "longest_stall_s": self.longest_stall(),
            "items": total,
            "completed": info.completed if info else 0,
            "failed": info.failed if info else 0,
            "results": len(seen),
            "results_hash_fields": len(fields),
            "lost": lost,
            "lost_indexes": lost_indexes[:100],
            "duplicates": duplicated,
            "duplicate_checks": duplicates,
            "duplicate_indexes": dup_indexes[:100],
            "stray_result_fields": stray_fields[:100],
            "mismatched": len(mismatched),
            "mismatched_indexes": mismatched[:100],
            "failed_by_error_type": dict(errors),
            "results_by_worker": dict(by_worker),
            "generated_estimate": sum(generated.values()),
            "reruns_estimate": sum(reruns_by_worker.values()),
            "reruns_by_worker": reruns_by_worker,
            "results_missing_from_counters": uncounted,
            "unlisted_worker_events": sum(run.unlisted_events for run in self.runs),
            "worker_counter_resets": counter_resets,
            "kills": dict(self.kills),
            "worker_stops": sum(self.kills.values()),
            "workers_started": len(self.runs),
            "unexpected_worker_exits": self.unexpected_exits,
            "redis_restarts": 1 if self.redis_back_t is not None else 0,
            "redis_killed_at_s": _r(self.redis_killed_t),
            "redis_down_s": outage,
            "broker_outages_s": [[_r(a), _r(b)] for a, b in self.broker_outages],
            "job_missing_samples": self.job_missing_samples,
            "left_in_queue": queued,
            "left_unacked": unacked,
            "workers": workers,
        }


# --- output ------------------------------------------------------------------------------------
def chart(soak: Soak, path: Path) -> bool:
    """RSS of every worker over time, with items done and the chaos events; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    done = [(s["t"], s["completed"] + s["failed"]) for s in soak.samples if "completed" in s]
    if done:
        top.plot(*zip(*done, strict=True), color="#4c72b0")
    top.set_ylabel("items done")
    for run in soak.runs:
        if run.rss:
            bottom.plot(*zip(*run.rss, strict=True), label=run.name, linewidth=1)
    bottom.set_ylabel("worker RSS (MiB)")
    bottom.set_xlabel("seconds since the soak started")
    styles = {"sigkill": "#c44e52", "sigterm": "#dd8452", "redis_sigkill": "black"}
    for e in soak.timeline:
        if e["event"] in styles:
            for ax in (top, bottom):
                ax.axvline(e["t"], color=styles[e["event"]], linewidth=0.8, alpha=0.6)
    top.set_title("soak: red SIGKILL, orange SIGTERM, black Redis SIGKILL")
    if len(soak.runs) <= 20:
        bottom.legend(fontsize="small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(figures: dict[str, Any]) -> None:
    f = figures
    verdict = "PASS" if f["ok"] else "FAIL"
    echo = click.echo
    echo(
        f"\nsoak {verdict}: job {f['job_id']} {f['status']} in {f['elapsed_s']} s "
        f"({f['items_per_s']} items/s; longest stall {f['longest_stall_s']} s)"
    )
    echo(
        f"  items {f['items']:,}: results {f['results']:,}, completed {f['completed']:,}, "
        f"failed {f['failed']:,} {f['failed_by_error_type'] or ''}".rstrip()
    )
    echo(f"  lost {f['lost']}   duplicates {f['duplicates']}   mismatched {f['mismatched']}")
    echo(
        f"  re-runs {f['reruns_estimate']:,} (items counted by workers beyond their results; "
        f"a lower bound: {f['results_missing_from_counters']:,} results were never counted)"
    )
    echo(
        f"  worker counters reset {f['worker_counter_resets']} time(s); serving workers "
        f"missing from `genq workers` {f['unlisted_worker_events']} time(s)"
    )
    echo(
        f"  worker stops {f['worker_stops']} {f['kills']}, workers started "
        f"{f['workers_started']}, unexpected exits {f['unexpected_worker_exits']}"
    )
    echo(
        f"  redis restarts {f['redis_restarts']} (killed at {f['redis_killed_at_s']} s, "
        f"down {f['redis_down_s']} s); left in queue {f['left_in_queue']}, "
        f"unacked {f['left_unacked']}"
    )
    echo("  worker  pid      ready_s  stopped             RSS MiB ready/peak/final  results")
    for w in f["workers"]:
        stop = f"{w['stop_signal']}@{w['stop_t']}" if w["stop_signal"] else "-"
        stop = "steady" if w["steady"] and not w["stop_signal"] else stop
        results = f["results_by_worker"].get(w["worker_id"], 0)
        rss = f"{w['rss_at_ready_mb']}/{w['rss_peak_mb']}/{w['rss_final_mb']}"
        echo(
            f"  {w['name']:<7} {w['pid']:<8} {w['ready_t']!s:<8} {stop:<19} {rss:<25} {results:>7}"
        )


@contextlib.contextmanager
def cleanup_on_exit(stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` however the soak ends: normally, on an exception, Ctrl-C or SIGTERM."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()


def stop_all(soak: Soak | None, server: RedisServer | None) -> None:
    if soak is not None:
        for run in soak.runs:
            if run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.process.terminate()
        deadline = time.monotonic() + 20
        for run in soak.runs:
            try:
                run.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
    if server is not None:
        server.kill()


@click.command()
@click.option("--items", type=int, default=10_000, show_default=True, help="Items in the job.")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers kept running.")
@click.option(
    "--steady-workers",
    type=int,
    default=0,
    show_default=True,
    help="Extra workers never stopped: memory over a long life, under the same chaos.",
)
@click.option("--model", help="Model directory (default: a tiny random GPT-2, built here).")
@click.option("--lease-s", type=int, default=10, show_default=True, help="GENQ_LEASE_S.")
@click.option("--heartbeat-s", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--chunk-size", type=int, default=16, show_default=True, help="Items per message.")
@click.option(
    "--kill-every-s",
    type=float,
    default=10.0,
    show_default=True,
    help="Mean seconds between worker stops (each 0.5x-1.5x of it, at random).",
)
@click.option(
    "--sigterm-share",
    type=float,
    default=0.25,
    show_default=True,
    help="Share of worker stops that are SIGTERM (warm shutdown) rather than SIGKILL.",
)
@click.option(
    "--redis-at",
    type=float,
    default=0.5,
    show_default=True,
    help="Kill Redis once this share of the items is done.",
)
@click.option("--redis-down-s", type=float, default=3.0, show_default=True)
@click.option(
    "--term-grace-s",
    type=float,
    default=90.0,
    show_default=True,
    help="SIGKILL a worker still running this long after its SIGTERM.",
)
@click.option(
    "--torch-threads",
    type=int,
    help="OMP_NUM_THREADS per worker [CPUs / workers]; 0 leaves it unset.",
)
@click.option("--sample-s", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout-s", type=float, default=1200.0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="bench-out/soak",
    show_default=True,
)
def main(**kwargs: Any) -> None:
    """Run one big job while workers are killed at random and Redis restarts once."""
    out = Path(kwargs.pop("out"))
    if kwargs["torch_threads"] is None:
        kwargs["torch_threads"] = max(
            1, (os.cpu_count() or 1) // max(kwargs["workers"] + kwargs["steady_workers"], 1)
        )
    opts = Options(out=out, **kwargs)
    if opts.workers < 1 or opts.items < 1:
        raise click.BadParameter("--items and --workers must be at least 1")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out / "logs").glob("worker-*.log"):
        old.unlink()
    soak: Soak | None = None
    server: RedisServer | None = None
    figures: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="genq-soak-") as scratch:
        with cleanup_on_exit(lambda: stop_all(soak, server)):
            model = ensure_model(opts.model, Path(scratch))
            server = RedisServer(Path(scratch) / "redis", out / "logs" / "redis.log")
            server.log.write_bytes(b"")
            server.start()
            click.echo(f"redis-server on port {server.port} (append-only)", err=True)
            soak = Soak(opts, server, model)
            figures = soak.run()
        figures["settings"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()
        }
        figures["model"] = opts.model or "tiny random GPT-2 (built for the run)"
        figures["cpus"] = os.cpu_count()
        path = out / "soak.json"
        path.write_text(
            json.dumps({**figures, "timeline": soak.timeline, "samples": soak.samples}, indent=1)
        )
        png = out / "rss.png"
        drew = chart(soak, png)
    report(figures)
    click.echo(f"\nwrote {path}" + (f" and {png}" if drew else ""), err=True)
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
