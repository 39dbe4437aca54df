"""The soak's processes: its private Redis server, and the `genq worker` subprocesses it
starts, stops and replaces, with each worker's readiness and memory (RSS) over time."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bench.soak.timeline import Timeline, round2
from genq.devtools.redis_server import RedisProcess, die_with_parent

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"genq worker (\S+) ready: engine=")
WORKER_READY_TIMEOUT_S = 300.0
STOP_ALL_TIMEOUT_S = 20.0  # for every worker to exit after the final SIGTERM


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
            "started_t": round2(self.started_t),
            "ready_t": round2(self.ready_t),
            "stop_signal": self.stop_signal,
            "stop_t": round2(self.stop_t),
            "exit_t": round2(self.exit_t),
            "exit_code": self.exit_code,
            "rss_peak_mb": round(max((m for _, m in self.rss), default=0.0), 1),
            "rss_hwm_mb": round(self.peak_hwm_mb, 1),
            "rss_at_ready_mb": self.rss_at_ready(),
            "rss_final_mb": self.rss[-1][1] if self.rss else None,
            "steady": self.steady,
            "unlisted_events": self.unlisted_events,
            "log": str(self.log),
        }


def worker_env(
    redis_url: str, model: str, lease_s: int, heartbeat_s: float, torch_threads: int
) -> dict[str, str]:
    """The environment of every worker the soak starts."""
    env = {
        **os.environ,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_MODEL": model,
        "GENQ_DEVICE": "cpu",
        "GENQ_LEASE_S": str(lease_s),
        "GENQ_HEARTBEAT_S": str(heartbeat_s),
        "PYTHONUNBUFFERED": "1",
    }
    if torch_threads > 0:
        threads = str(torch_threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


class Workers:
    """Every worker of one soak: started, watched until ready, stopped, replaced."""

    def __init__(
        self, timeline: Timeline, env: dict[str, str], logs: Path, term_grace_s: float
    ) -> None:
        self.timeline = timeline
        self.env = env
        self.logs = logs
        self.term_grace_s = term_grace_s
        self.runs: list[WorkerRun] = []
        self.kills = Counter[str]()  # stops by signal name
        self.unexpected_exits = 0

    def start(self, reason: str, steady: bool = False) -> WorkerRun:
        name = f"w{len(self.runs) + 1}"
        log = self.logs / f"worker-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the soak only; it stops them in order
                preexec_fn=die_with_parent(),
            )
        run = WorkerRun(name, process, log, self.timeline.now(), steady=steady)
        self.runs.append(run)
        self.timeline.event(
            "worker_start", worker=name, pid=process.pid, reason=reason, steady=steady
        )
        return run

    def live(self) -> list[WorkerRun]:
        return [r for r in self.runs if r.running]

    def serving(self) -> list[WorkerRun]:
        """Workers that are ready and not being stopped: the ones chaos may pick."""
        return [r for r in self.live() if r.ready_t is not None and r.stop_signal is None]

    def stop(self, run: WorkerRun, sig: signal.Signals) -> None:
        run.sample_memory(self.timeline.now())
        run.stop_signal = sig.name
        run.stop_t = self.timeline.now()
        with contextlib.suppress(ProcessLookupError):
            run.process.send_signal(sig)
        self.kills[sig.name] += 1
        self.timeline.event(sig.name.lower(), worker=run.name, pid=run.pid, worker_id=run.worker_id)

    def check(self, replace_dead: bool) -> None:
        """Readiness, exits (expected or not: a worker that died by itself is replaced while
        ``replace_dead``), overdue warm shutdowns."""
        now = self.timeline.now
        event = self.timeline.event
        for run in self.live():
            run.scan_log()
            if run.ready_t is None and run.worker_id is not None:
                run.ready_t = now()
                event("worker_ready", worker=run.name, worker_id=run.worker_id)
            code = run.process.poll()
            if code is not None:
                run.exit_t, run.exit_code = now(), code
                run.scan_log()
                if run.stop_signal is None:
                    self.unexpected_exits += 1
                    event("worker_died", worker=run.name, exit_code=code, log=str(run.log))
                    if replace_dead:
                        self.start(f"replaces {run.name} (died)", run.steady)
                else:
                    event("worker_exit", worker=run.name, exit_code=code)
                continue
            if run.ready_t is None and now() - run.started_t > WORKER_READY_TIMEOUT_S:
                raise click.ClickException(f"worker {run.name} did not start; see {run.log}")
            overdue = run.stop_t is not None and now() - run.stop_t > self.term_grace_s
            if run.stop_signal == "SIGTERM" and overdue:
                event("sigterm_overdue", worker=run.name, after_s=self.term_grace_s)
                run.stop_signal = "SIGTERM+SIGKILL"
                with contextlib.suppress(ProcessLookupError):
                    run.process.kill()

    def wait_ready(self, runs: list[WorkerRun]) -> None:
        while any(r.ready_t is None for r in runs):
            self.check(replace_dead=True)
            if any(r.exit_t is not None and r.ready_t is None for r in runs):
                bad = next(r for r in runs if r.exit_t is not None)
                raise click.ClickException(f"worker {bad.name} exited at start; see {bad.log}")
            time.sleep(0.2)

    def sample_memory(self, t: float) -> dict[str, float]:
        """Sample every live worker's RSS, as at ``t``: {name: MiB} of those that answered."""
        rss = {}
        for run in self.live():
            run.sample_memory(t)
            if run.rss and run.rss[-1][0] == round(t, 2):
                rss[run.name] = run.rss[-1][1]
        return rss

    def stop_all(self) -> None:
        """SIGTERM every worker still running; SIGKILL those not gone in STOP_ALL_TIMEOUT_S."""
        for run in self.runs:
            if run.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.process.terminate()
        deadline = time.monotonic() + STOP_ALL_TIMEOUT_S
        for run in self.runs:
            try:
                run.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


def stop_all(workers: Workers | None, server: RedisProcess | None) -> None:
    """Stop whatever the soak started, workers first (however far it got)."""
    if workers is not None:
        workers.stop_all()
    if server is not None:
        server.kill()
