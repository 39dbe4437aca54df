"""The worker process: load the engine once, then consume Celery messages in batches.

Batching on the Celery side uses celery-batches: its ``Batches`` task buffers messages and
flushes them as one call when ``flush_every`` have arrived or ``flush_interval`` has passed.
Each message carries a chunk of prompts, so one flush holds up to ``max_batch_size`` chunks,
from any number of jobs; the batching policy then cuts model batches across all of them.
The pool is ``solo``: the model lives in the main process (no fork after CUDA initialisation)
and celery-batches runs the flush there.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals
from celery_batches import Batches
from pydantic import ValidationError

from genq.broker import GENERATE_TASK, celery_app
from genq.errors import WorkerConfigError
from genq.schema import WorkChunk, WorkerInfo, utcnow
from genq.settings import Settings
from genq.store import JobStore, connect
from genq.worker.engines import Engine, load_engine
from genq.worker.runner import BatchRunner

log = logging.getLogger("genq.worker")

# Celery options a genq worker decides itself: one solo process per GPU.
_RESERVED_OPTIONS = ("-P", "--pool", "-c", "--concurrency", "-Q", "--queues", "--autoscale")


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: Settings, runner: BatchRunner) -> Celery:
    """The worker's Celery app with the batch task registered on genq's queue."""
    app = celery_app(settings)
    # Unacknowledged messages sit in the buffer until their flush ends, so the prefetch window
    # must hold a whole flush (celery-batches' requirement); no more, so that other workers
    # get the rest of the queue.
    app.conf.worker_prefetch_multiplier = settings.max_batch_size

    @app.task(  # type: ignore[untyped-decorator]
        name=GENERATE_TASK,
        base=Batches,
        flush_every=settings.max_batch_size,
        flush_interval=settings.max_wait_ms / 1000.0,
        acks_late=True,
    )
    def generate(requests: Sequence[Any]) -> None:
        chunks = []
        for request in requests:
            try:
                chunks.append(WorkChunk.model_validate_json(request.args[0]))
            except (ValidationError, IndexError, TypeError, ValueError) as e:
                log.error("dropping malformed message %s: %s", request.id, e)
        if chunks:
            runner.process(chunks)

    return app


class Heartbeat(threading.Thread):
    """Refreshes the worker's record in Redis so producers and ``genq workers`` can see it."""

    def __init__(self, store: JobStore, worker_id: str, period_s: float) -> None:
        super().__init__(name="genq-heartbeat", daemon=True)
        self.store = store
        self.worker_id = worker_id
        self.period_s = period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            try:
                self.store.heartbeat(self.worker_id, self.period_s)
            except Exception as e:  # Redis away: keep trying, the worker itself reconnects
                log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        self.stopped.set()


def check_celery_args(celery_args: Sequence[str]) -> None:
    for arg in celery_args:
        if arg.split("=", 1)[0] in _RESERVED_OPTIONS:
            raise WorkerConfigError(
                f"{arg.split('=', 1)[0]} is set by genq: a worker is one process that owns one "
                "GPU (pool solo) on genq's queue. To scale, start more `genq worker` processes "
                "(CUDA_VISIBLE_DEVICES=N or GENQ_DEVICE=cuda:N for each); to use another queue, "
                "set GENQ_QUEUE."
            )


def run_worker(settings: Settings, celery_args: Sequence[str] = ()) -> None:
    """Load the engine, then run a Celery worker until it is stopped (SIGTERM/SIGINT)."""
    check_celery_args(celery_args)
    engine: Engine = load_engine(settings)
    engine.warmup()
    store = JobStore(connect(settings.redis_url), settings.result_ttl_s)
    worker_id = new_worker_id()
    runner = BatchRunner(engine, store, settings, worker_id)
    app = create_app(settings, runner)
    info = WorkerInfo(
        id=worker_id,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        engine=engine.name,
        model=engine.model_name,
        device=engine.device,
        max_batch_size=settings.max_batch_size,
        started_at=utcnow(),
        last_seen=utcnow(),
    )
    heartbeat = Heartbeat(store, worker_id, settings.heartbeat_s)

    def on_ready(**_: Any) -> None:
        store.register_worker(info, settings.heartbeat_s)
        heartbeat.start()
        log.warning(
            "genq worker %s ready: engine=%s model=%s device=%s max_batch_size=%d",
            worker_id,
            engine.name,
            engine.model_name,
            engine.device,
            settings.max_batch_size,
        )

    signals.worker_ready.connect(on_ready, weak=False)
    argv = [
        "worker",
        "--pool=solo",
        f"--queues={settings.queue}",
        f"--hostname=genq-{worker_id}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=INFO",
        *celery_args,
    ]
    try:
        app.worker_main(argv)
    finally:
        heartbeat.stop()
        try:
            store.remove_worker(worker_id)
        except Exception as e:
            log.warning("could not remove worker record: %s", e)
