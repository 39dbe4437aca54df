"""What the scaling bench reads: Redis INFO deltas, process CPU from /proc, worker processes
started and reaped, and one job timed from submit to its last result read."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from genq.devtools.redis_server import die_with_parent
from genq.producer.client import Client
from genq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
JOB_TIMEOUT_S = 1800.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARAMS: dict[str, Any] = {"max_new_tokens": 16}
WORDS = [
    "write",
    "a",
    "short",
    "friendly",
    "tagline",
    "for",
    "our",
    "new",
    "bakery",
    "cafe",
    "product",
    "line",
    "today",
]


def prompts(n: int, seed: int = 7, low: int = 30, high: int = 100) -> list[str]:
    """``n`` distinct prompts of ``low``-``high`` bytes (uniform), as content pipelines send."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = rng.randint(low, high)
        text = f"Item {i}:"
        while len(text) < target:
            text += " " + rng.choice(WORDS)
        out.append(text[:target])
    return out


def unique_queue(tag: str) -> str:
    return f"scaling-{tag}-{os.getpid()}-{time.time_ns()}"


# --- process CPU ---------------------------------------------------------------------------
def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds; 0.0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": fields from state (#3) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- Redis INFO ----------------------------------------------------------------------------
@dataclass
class ServerSample:
    """One Redis server's counters at one moment."""

    cpu_s: float  # used_cpu_user + used_cpu_sys: the server process, all its threads
    children_cpu_s: float  # AOF rewrites and other forked children
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    net_in: int
    net_out: int
    used_memory: int

    @classmethod
    def take(cls, r: redis.Redis) -> ServerSample:
        info = r.info("everything")
        commands = {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()
            if name.startswith("cmdstat_")
        }
        return cls(
            cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            children_cpu_s=float(info["used_cpu_user_children"])
            + float(info["used_cpu_sys_children"]),
            commands=commands,
            net_in=int(info["total_net_input_bytes"]),
            net_out=int(info["total_net_output_bytes"]),
            used_memory=int(info["used_memory"]),
        )


def server_delta(
    before: ServerSample, after: ServerSample, seconds: float, items: int
) -> dict[str, Any]:
    """What a server did between two samples, per second and per item."""
    commands = {}
    for name, (calls, usec) in after.commands.items():
        calls0, usec0 = before.commands.get(name, (0, 0))
        if calls - calls0 > 0:
            commands[name] = {
                "calls": calls - calls0,
                "usec": usec - usec0,
                "calls_per_item": (calls - calls0) / items,
                "usec_per_item": (usec - usec0) / items,
            }
    cpu = after.cpu_s - before.cpu_s
    return {
        "cpu_s": cpu,
        "cpu_pct_of_core": 100 * cpu / seconds,
        "children_cpu_s": after.children_cpu_s - before.children_cpu_s,
        "cpu_us_per_item": 1e6 * cpu / items,
        # The items/s at which this server would use one whole core, were its cost per item
        # to stay the same (an extrapolation: see docs/scaling.md).
        "items_per_s_at_one_core": items / cpu if cpu > 0 else None,
        "net_in_bytes_per_item": (after.net_in - before.net_in) / items,
        "net_out_bytes_per_item": (after.net_out - before.net_out) / items,
        "calls_per_item": sum(c["calls"] for c in commands.values()) / items,
        "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["calls"])),
    }


# --- workers -------------------------------------------------------------------------------
@dataclass
class Workers:
    """Running worker processes and their logs."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def cpu_s(self) -> float:
        return sum(process_cpu_s(p.pid) for p in self.procs)


def worker_env(redis_url: str, queue: str, env: Mapping[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_QUEUE": queue,
        "GENQ_ENGINE": "null",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    }


@contextmanager
def workers(
    count: int,
    redis_url: str,
    queue: str,
    env: Mapping[str, str],
    log_dir: Path,
    module: str = "genq",
) -> Iterator[Workers]:
    """``count`` workers (``python -m module worker``) on ``queue``, each ready (it logged
    ``ready: engine=``); every one is stopped on exit, SIGKILLed if SIGTERM is not enough,
    whatever happened (and SIGKILLed by the kernel should this process die first)."""
    full = worker_env(redis_url, queue, env)
    pool = Workers()
    try:
        for n in range(count):
            log = log_dir / f"worker-{queue}-{n}.log"
            with log.open("wb") as out:
                pool.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", module, "worker"],
                        env=full,
                        cwd=ROOT,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent(),
                    )
                )
            pool.logs.append(log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for log, proc in zip(pool.logs, pool.procs, strict=True):
            while "ready: engine=" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = "exited" if proc.poll() is not None else "not ready in time"
                    raise RuntimeError(f"worker {why}; {log}:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        yield pool
    finally:
        stop(pool.procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- one job -------------------------------------------------------------------------------
def client_for(redis_url: str, queue: str, chunk_size: int | None, **extra: Any) -> Client:
    return Client(
        settings=Settings(
            redis_url=redis_url,
            queue=queue,
            chunk_size=chunk_size,
            max_items_per_job=1_000_000,
            **extra,
        )
    )


def run_job(
    client: Client, items: list[str], params: Mapping[str, Any] = PARAMS
) -> tuple[str, float]:
    """Submit ``items``, wait for the job, read every result; raise unless every item has a
    result without error. Returns the job id and how long the submit call took."""
    started = time.perf_counter()
    job_id = client.submit(items, dict(params))
    submit_s = time.perf_counter() - started
    info = client.wait(job_id, timeout_s=JOB_TIMEOUT_S, poll_interval_s=0.02)
    ok = sum(1 for r in client.iter_results(job_id, page_size=1000) if r.ok)
    if info.completed != len(items) or ok != len(items):
        raise RuntimeError(
            f"job {job_id} ended {info.status.value}: {info.completed} completed, "
            f"{info.failed} failed, {ok} results read without error, of {len(items)}"
        )
    return job_id, submit_s


def measured_job(
    client: Client,
    servers: Mapping[str, redis.Redis],
    pool: Workers,
    items: list[str],
    params: Mapping[str, Any] = PARAMS,
) -> dict[str, Any]:
    """:func:`run_job` timed from submit to the last result read, with what each Redis server,
    the workers and this process (the producer and reader) spent meanwhile."""
    before = {name: ServerSample.take(r) for name, r in servers.items()}
    workers0, self0 = pool.cpu_s(), time.process_time()
    started = time.perf_counter()
    job_id, submit_s = run_job(client, items, params)
    seconds = time.perf_counter() - started
    workers_cpu, self_cpu = pool.cpu_s() - workers0, time.process_time() - self0
    after = {name: ServerSample.take(r) for name, r in servers.items()}
    n = len(items)
    return {
        "job_id": job_id,
        "items": n,
        "seconds": seconds,
        "submit_s": submit_s,  # client.submit: validation, job record, messages staged
        "items_per_s": n / seconds,
        "workers_cpu_s": workers_cpu,
        "workers_cpu_pct_of_core": 100 * workers_cpu / seconds,
        "producer_cpu_s": self_cpu,
        "producer_cpu_pct_of_core": 100 * self_cpu / seconds,
        "redis": {name: server_delta(before[name], after[name], seconds, n) for name in servers},
    }
