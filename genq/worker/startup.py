"""The worker's startup, what ``genq worker`` runs (:func:`run_worker`): check the Celery
options and both Redis servers, load the engine once, build the worker's parts around the
Celery app (:mod:`genq.worker.app`), then run Celery's worker until it is stopped.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any

import redis
from celery import signals
from redis.exceptions import RedisError

from genq.connection import Endpoint, broker_endpoint, results_endpoint, stores_split
from genq.dead_letters import DeadLetterStore
from genq.errors import RedisAccessError, WorkerConfigError, WorkerCrashedError
from genq.feeder import Feeder
from genq.logs import configure_logging, hand_celery_logging_to_genq
from genq.schema import WorkerInfo, utcnow
from genq.server_facts import append_only
from genq.settings import Settings
from genq.worker.app import create_app
from genq.worker.engines import Engine, load_engine
from genq.worker.flow import FlowControl, Heartbeat
from genq.worker.guard import DeadLetters
from genq.worker.loop import EngineLoop
from genq.worker.metrics import WorkerMetrics
from genq.worker.ordering import policy_for
from genq.worker.runner import BatchRunner
from genq.worker.scheduler import Scheduler
from genq.worker.work_store import WorkStore

log = logging.getLogger("genq.worker")

# Celery options a genq worker decides itself: one solo process per GPU.
_RESERVED_OPTIONS = ("-P", "--pool", "-c", "--concurrency", "-Q", "--queues", "--autoscale")


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def check_redis(
    client: redis.Redis, endpoint: Endpoint, holds: str = "every queued job and result"
) -> None:
    """Fail at once, before loading a model, when Redis refuses genq (credentials, TLS, no
    such database, not a Redis at all, Sentinels that monitor no such master): a worker that
    retried forever would look alive and take no work. An unreachable Redis is only logged:
    Celery keeps trying, so workers may start before Redis does. A Redis without an
    append-only file is worth one warning. Called for each of the broker and the results
    store (``endpoint``: which, for messages; ``holds``: what a restart would lose)."""
    try:
        client.ping()
        aof = append_only(client)
    except RedisError as e:
        problem = endpoint.explain(e)
        if isinstance(problem, RedisAccessError):
            raise problem from e
        log.warning("%s; the worker keeps trying", problem or e)
        return
    if aof is False:
        log.warning(
            "Redis at %s (%s) has no append-only file: if it restarts, %s is lost (set "
            "appendonly yes; see docs/reliability.md)",
            endpoint.shown,
            endpoint.setting,
            holds,
        )


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
    json_logs = configure_logging(settings)  # GENQ_LOG_FORMAT=json: JSON lines from here on
    if json_logs:
        hand_celery_logging_to_genq()
    # Two Redis servers, or one: the results store (GENQ_RESULTS_URL: jobs, results, worker
    # records) and the broker's (GENQ_REDIS_URL: queue, leases, pending lists, dead letters).
    results, broker_side = results_endpoint(settings), broker_endpoint(settings)
    store = WorkStore(results.connect(), settings.result_ttl_s, settings.unfinished_ttl_s)
    store.url_setting = results.setting
    split = stores_split(settings)
    broker = broker_side.connect() if split else store.redis
    if split:
        check_redis(broker, broker_side, "every queued message")
        check_redis(store.redis, results, "every job and result")
    else:
        check_redis(store.redis, results)
    engine: Engine = load_engine(settings)
    worker_id = new_worker_id()
    metrics = WorkerMetrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    runner = BatchRunner(engine, store, settings, worker_id, metrics)
    scheduler = Scheduler(
        settings.max_batch_size,
        settings.resolved_max_batch_tokens(engine.device),
        settings.max_wait_ms,
        policy_for(settings),
    )
    loop = EngineLoop(scheduler, runner, settings)
    loop.start()
    loop.warmed.wait()
    if loop.failure is not None:
        raise loop.failure
    flow = FlowControl(scheduler, target_prompts=2 * settings.max_batch_size)
    dead = DeadLetters(DeadLetterStore(broker), worker_id, settings.queue, flow.touch)
    feeder = Feeder(broker, settings, jobs_here=not split)
    app = create_app(settings, loop, flow, dead, feeder)
    info = WorkerInfo(
        id=worker_id,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        engine=engine.name,
        model=engine.model_name,
        device=engine.device,
        max_batch_size=settings.max_batch_size,
        queue=settings.queue,
        started_at=utcnow(),
        last_seen=utcnow(),
    )
    heartbeat = Heartbeat(store, info, settings.heartbeat_s, scheduler, flow, feeder, metrics)

    def on_ready(**_: Any) -> None:
        store.register_worker(info, settings.heartbeat_s)
        heartbeat.start()
        metrics.up.set(1)
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
        *(["--quiet"] if json_logs else []),  # Celery's banner: lines that are not records
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={settings.queue}",
        f"--hostname=genq-{worker_id}@%h",
        "--without-gossip",
        "--without-mingle",
        # GENQ_CELERY_EVENTS=1: Flower counts a worker offline without its heartbeat events.
        *([] if settings.celery_events else ["--without-heartbeat"]),
        "--loglevel=INFO",
        *celery_args,
    ]
    controllers: list[Any] = []  # Celery's WorkController, to read its exit code
    signals.worker_init.connect(lambda sender, **_: controllers.append(sender), weak=False)
    # Celery's SIGINT/SIGQUIT handlers stop with exit code 1 too: a stop someone asked for.
    asked_to_stop: list[str] = []
    signals.worker_shutting_down.connect(
        lambda sig="", **_: asked_to_stop.append(str(sig)), weak=False
    )
    try:
        # worker_main swallows the exit status Celery's worker ends with: read it below.
        app.worker_main(argv)
    finally:
        metrics.up.set(0)
        heartbeat.stop()
        if heartbeat.is_alive():
            heartbeat.join(5)
        try:
            store.remove_worker(worker_id)
        except Exception as e:
            log.warning("could not remove worker record: %s", e)
    if loop.failure is not None:
        raise WorkerCrashedError(
            f"the engine loop failed ({type(loop.failure).__name__}: {loop.failure}); the "
            "worker stopped and its unfinished messages went back to the queue"
        ) from loop.failure
    exitcode = controllers[-1].exitcode if controllers else None
    if exitcode and not asked_to_stop:
        raise WorkerCrashedError(
            f"the Celery worker stopped on an unrecoverable error (status {exitcode}; see the "
            "log above); its unfinished messages go back to the queue"
        )
