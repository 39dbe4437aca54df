"""`genq worker` subprocesses on the `null` engine, for tests that bring their own Redis servers
(no model to build: the session's tiny GPT-2 is not needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import ROOT, WorkerProcess


def start_null_worker(log: Path, wait: bool = True, **env: str) -> WorkerProcess:
    """A ``genq worker`` with GENQ_ENGINE=null and the GENQ_* overrides in ``env``."""
    full_env = {
        **os.environ,
        "GENQ_ENGINE": "null",
        "GENQ_HEARTBEAT_S": "1",
        "PYTHONUNBUFFERED": "1",
        **{f"GENQ_{k.upper()}": str(v) for k, v in env.items()},
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "genq", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    worker = WorkerProcess(process, log)
    if wait:
        deadline = time.monotonic() + 60
        while "ready: engine=" not in worker.output():
            if process.poll() is not None or time.monotonic() > deadline:
                worker.stop(signal.SIGKILL)
                raise RuntimeError(f"worker did not start:\n{worker.output()}")
            time.sleep(0.1)
    return worker


@contextmanager
def null_worker(log: Path, **env: str) -> Iterator[WorkerProcess]:
    worker = start_null_worker(log, True, **env)
    try:
        yield worker
    finally:
        worker.stop()
