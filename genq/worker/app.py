"""The worker's Celery app: it feeds queue messages to a batching loop.

Why not celery-batches: it runs each flush on the consumer thread, so no message is received
while the model works, and a flush is processed as a unit (a small job waits for a big job's
messages to finish). Here the consumer thread only admits messages into the scheduler's pool
(tokenised, checked), while an engine thread draws batches from that pool across messages and
jobs; a message is acknowledged, through the consumer's event loop, when its last prompt has
a result. The pool is ``solo``: the model lives in this process (no fork after CUDA init).
The process's startup (its checks, the engine's loading, Celery's worker run) is
:mod:`genq.worker.startup`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import Celery, Task, bootsteps, signals
from pydantic import ValidationError
from redis.exceptions import RedisError

from genq.broker import GENERATE_TASK, celery_app
from genq.errors import RefusedMessageError
from genq.feeder import Feeder, log_refill_failure
from genq.schema import WorkChunk
from genq.sentinel import is_sentinel_url
from genq.settings import Settings
from genq.worker.events import TaskEvents
from genq.worker.flow import FlowControl, ReplicaBarrier
from genq.worker.guard import DeadLetters, guarded_consumer, guarded_transport, message_text
from genq.worker.item import Delivery
from genq.worker.loop import SHUTDOWN_GRACE_S, EngineLoop
from genq.worker.preparing import first_problem

log = logging.getLogger("genq.worker")

# Redis errors that pass: a message that met one is requeued rather than refused.
_REDIS_AWAY = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    # An ACL that denies a script is a configuration to fix, not a reason to drop the work.
    redis.exceptions.NoPermissionError,
)


def read_chunk(payload: Any) -> WorkChunk:
    """The work chunk in a genq.generate message body (Celery protocol 2: ``[args, kwargs,
    embed]``); :class:`RefusedMessageError` when the body holds none."""
    args = payload[0] if isinstance(payload, list | tuple) and payload else None
    if not (isinstance(args, list | tuple) and len(args) == 1 and isinstance(args[0], str)):
        raise RefusedMessageError(
            "the body is not a genq.generate call: expected one argument, a work chunk (JSON)"
        )
    try:
        return WorkChunk.model_validate_json(args[0])
    except ValidationError as e:
        raise RefusedMessageError(
            f"not a work chunk of this genq version ({first_problem(e)}); producers and "
            "workers must run the same genq version"
        ) from None


def create_app(
    settings: Settings, loop: EngineLoop, flow: FlowControl, dead: DeadLetters, feeder: Feeder
) -> Celery:
    """The worker's Celery app: genq's task admits each message into the loop's scheduler;
    every message it cannot use is refused into ``dead`` (see :mod:`genq.worker.guard`). Each
    message taken tops the queue up from the jobs' pending lists (:mod:`genq.feeder`)."""
    runner, scheduler = loop.runner, loop.scheduler
    split = not runner.settles_leases  # results on another Redis than the queue
    barrier = ReplicaBarrier(runner.store.redis, enabled=split)
    # One Redis for queue and results: each message's refill and lease ride in its
    # admission's round trip (docs/scaling.md, "Queue path before and after").
    rides = None if split else feeder
    app = celery_app(settings)
    app.conf.broker_transport = guarded_transport(
        dead, is_sentinel_url(settings.redis_url), leases_ride=not split
    )
    app.conf.worker_consumer = guarded_consumer(dead)
    app.conf.worker_prefetch_multiplier = 1  # FlowControl moves the window from there
    # genq's messages never run as Celery tasks (the engine loop runs them), so there is
    # nothing for this to cancel; set it to silence Celery's warning on every reconnection.
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = True
    loop.on_room = flow.soon
    # Set by Celery's signal handlers (SIGTERM, SIGINT) before the consumer stops: tells a
    # shutdown from a lost connection, which stops the consumer too.
    shutting_down = threading.Event()
    signals.worker_shutting_down.connect(lambda **_: shutting_down.set(), weak=False)

    class GenerateTask(Task):  # type: ignore[misc]
        name = GENERATE_TASK
        acks_late = True

        def run(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("genq.generate runs through the worker's engine loop")

        def Strategy(self, task: Task, app: Celery, consumer: Any) -> Any:
            errors = consumer.connection_errors
            flow.consumer = consumer
            # GENQ_CELERY_EVENTS: a message is a task to Flower, received when admitted and
            # succeeded when acked (genq's Strategy replaces Celery's, which sends these).
            eventer = consumer.event_dispatcher
            events = TaskEvents(eventer) if eventer is not None and eventer.enabled else None

            def acknowledge(message: Any, written_at: float | None = None) -> None:
                if written_at is not None and not barrier.confirmed(written_at):
                    # Its results are not on a replica yet (ReplicaBarrier): ack later. Until
                    # then the message fills a slot of the prefetch window, as orphans do.
                    flow.orphaned += 1
                    generation = flow.channel_generation
                    consumer.timer.call_after(
                        ReplicaBarrier.RETRY_S, acknowledge_later, (message, written_at, generation)
                    )
                    flow.update()
                    return
                message.ack_log_error(log, errors)
                if events is not None:
                    events.succeeded(message)
                flow.update()

            def acknowledge_settled(message: Any) -> None:
                # Its lease went with its last results (RECORD): kombu's ack keeps its own
                # books and leaves Redis alone (qos.RidingQoS).
                message.channel.qos.settled.add(message.delivery_tag)
                acknowledge(message)

            def acknowledge_later(message: Any, written_at: float, generation: int) -> None:
                if generation != flow.channel_generation:
                    return  # a new channel: the message went back to the queue with the old one
                flow.orphaned -= 1
                acknowledge(message, written_at)

            def refused(message: Any, reason: str, job_id: str | None) -> None:
                dead.refuse(message_text(message), reason, task=GENERATE_TASK, job_id=job_id)
                message.ack_log_error(log, errors)
                if events is not None:
                    events.rejected(message)
                flow.update()

            def on_message(
                message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
            ) -> None:
                if rides is None:  # the refill is a round trip of its own: first, as ever
                    refill(feeder)
                    take(message, body, reject)
                    return
                admitted = False
                try:
                    admitted = take(message, body, reject)
                finally:  # refused, requeued or raised: refill without the admission
                    if not admitted:
                        refill(feeder)

            def take(message: Any, body: Any, reject: Any) -> bool:
                """Admit the message into the pool; whether it was admitted (and, where
                ``rides`` is set, the queue refilled in the same round trip)."""
                chunk: WorkChunk | None = None
                try:
                    # Decoding checks the content type: a pickled message raises
                    # ContentDisallowed here, which the guarded consumer refuses, unread.
                    chunk = read_chunk(message.payload if body is None else body)
                    qos = message.channel.qos  # RidingQoS: the lease, where it rides here
                    lease = qos.lease(message.delivery_tag)
                    ready = runner.admit(chunk, rides, lease)
                    if lease is not None:
                        qos.leased(message.delivery_tag)
                except RefusedMessageError as e:
                    refused(message, str(e), chunk.job_id if chunk is not None else None)
                    return False
                except _REDIS_AWAY as e:
                    # Redis is away, loading, read-only (failover) or full: hand the message
                    # back for later.
                    log.warning("could not admit message (%s); requeueing it", e)
                    reject(log, errors, True)
                    return False
                except RedisError as e:
                    # An answer that will be the same next time (a script error, a record of
                    # another version): requeueing would spin on the message forever.
                    reason = f"Redis refused to admit it ({type(e).__name__}: {e})"
                    refused(message, reason, chunk.job_id if chunk is not None else None)
                    return False

                # The engine thread finishes deliveries; the ack itself runs on this thread.
                def when_done() -> None:
                    if delivery.settling:
                        consumer.call_soon(acknowledge_settled, message)
                    else:
                        consumer.call_soon(acknowledge, message, time.monotonic())

                delivery = Delivery(
                    str(message.delivery_tag),
                    chunk.job_id,
                    len(ready),
                    when_done,
                    priority=chunk.priority,
                )
                scheduler.add(delivery, ready)
                if events is not None:
                    events.received(message, chunk, len(ready))
                flow.touch()
                flow.update()
                return True

            return on_message

    app.register_task(GenerateTask())

    class EngineStep(bootsteps.StartStopStep):  # type: ignore[misc]
        """Connects flow control to the consumer; drains the engine loop at warm shutdown."""

        requires = frozenset({"celery.worker.consumer.tasks:Tasks"})

        def start(self, c: Any) -> None:
            flow.consumer = c
            flow.orphaned = 0  # a new channel: kombu's prefetch window starts empty
            flow.channel_generation += 1
            flow.last_activity = time.monotonic()
            flow.update()

        def stop(self, c: Any) -> None:
            # Warm shutdown: the rows in flight get their grace period (see shutdown), so keep
            # holding and leasing their messages meanwhile, or another worker would take them
            # over. Connection lost: a message can only be acknowledged on the channel it came
            # on, so release them all; kombu requeues them when their leases expire, and items
            # that got results meanwhile are skipped on redelivery.
            warm = shutting_down.is_set()
            dropped = scheduler.drop_waiting() if warm else scheduler.release()[1]
            if dropped:
                log.warning("consumer stopping: %d buffered item(s) left to redelivery", dropped)

        def shutdown(self, c: Any) -> None:
            # Warm shutdown: the rows in flight finish and their results are written; then
            # kombu restores every unacknowledged message as the connection closes (finished
            # ones too, if their ack did not go out, unless their lease went with their
            # results: a rerun skips them).
            scheduler.close()
            loop.join(SHUTDOWN_GRACE_S + 10)
            _, dropped = scheduler.release()
            log.warning("engine loop stopped; %d waiting item(s) handed back", dropped)

    app.steps["consumer"].add(EngineStep)
    return app


def refill(feeder: Feeder) -> None:
    """Top the Celery queue up from the pending lists; Redis away is the heartbeat's to retry."""
    try:
        feeder.refill()
    except RedisError as e:
        log_refill_failure(e)
