"""Keeping a worker's consumer fed and alive: flow control of its prefetch window, and the
heartbeat thread that renews its leases and record and watches for a stalled consumer."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from genq import keyspace
from genq.feeder import Feeder
from genq.leases import Leases
from genq.schema import PRIORITIES, WorkerInfo
from genq.server_facts import confirm_writes, connected_replicas
from genq.settings import CONSUMER_STALL_S, REPLICA_CHECK_S
from genq.worker.metrics import WorkerMetrics
from genq.worker.scheduler import Scheduler
from genq.worker.work_store import WorkStore

log = logging.getLogger("genq.worker")


class FlowControl:
    """Keeps about ``target`` prompts buffered by moving the prefetch window one message at a time.

    Messages carry any number of prompts, so a window counted in messages would either starve
    the engine (small messages) or hoard a queue that other workers could serve (big ones).
    Runs on the consumer thread; other threads call :meth:`soon`.
    """

    def __init__(self, scheduler: Scheduler, target_prompts: int) -> None:
        self.scheduler = scheduler
        self.target = target_prompts
        self.consumer: Any = None
        # Messages whose lease was lost: never acked, they still fill a slot of kombu's
        # prefetch window on this channel until the connection is re-established.
        self.orphaned = 0
        self.channel_generation = 0  # moves on at each (re)connection
        self.last_activity = time.monotonic()  # a message received, or a (re)connection

    def update(self) -> None:
        qos = getattr(self.consumer, "qos", None)
        if qos is None:
            return
        held = self.scheduler.held() + self.orphaned
        want = held + 1 if self.scheduler.pending() < self.target else max(held, 1)
        if want != qos.value:
            qos.value = want
            qos.update()

    def touch(self) -> None:
        """A message was received (admitted or refused): the consumer is not stalled."""
        self.last_activity = time.monotonic()

    def soon(self) -> None:
        if self.consumer is not None:
            self.consumer.call_soon(self.update)

    def stalled(self, queued: int) -> bool:
        """Whether the consumer is stuck: room to spare and ``queued`` messages waiting, yet
        no message taken for CONSUMER_STALL_S (any thread)."""
        idle_s = time.monotonic() - self.last_activity
        return queued > 0 and self.scheduler.pending() < self.target and idle_s > CONSUMER_STALL_S

    def reconnect(self) -> None:
        """Make the consumer drop its broker connection and open a new one (any thread)."""

        def fail() -> None:
            # Raised in the consumer's event loop, a connection error is what Celery answers
            # by re-establishing the connection (and EngineStep.stop releasing what it held).
            raise redis.exceptions.ConnectionError("genq: consumer stalled; reconnecting")

        self.last_activity = time.monotonic()
        if self.consumer is not None:
            self.consumer.call_soon(fail)

    def lost(self, count: int) -> None:
        """``count`` messages were released after their leases were lost (any thread)."""
        generation = self.channel_generation

        def orphan() -> None:
            if generation == self.channel_generation:  # not a channel opened since
                self.orphaned += count
                self.update()

        if self.consumer is not None:
            self.consumer.call_soon(orphan)


class ReplicaBarrier:
    """Holds a message's acknowledgement until its results are on a replica of the results
    store, when that store is a Redis of its own (GENQ_RESULTS_URL) with replicas.

    On one Redis, a result and the later ack of its message reach a replica in that order,
    so a failover that loses the result loses the ack too and the message is redelivered. With
    two servers, the ack (on the broker) could survive a results failover that lost the result:
    the item would never end. One ``WAIT 1`` covers every result written before it started, so
    a burst of acks costs one round trip. Runs on the consumer thread. An ack goes ahead only
    once a replica confirmed, or a fresh look found the store without replicas: on an error or
    a replica silent for ``timeout_s``, the caller tries again later (the message stays held;
    if that outlasts its lease, it is redelivered, and its results, first write wins, decide).
    """

    CHECK_S = REPLICA_CHECK_S  # how often the results store is asked whether it has replicas
    RETRY_S = 1.0  # an ack held back is tried again this much later

    def __init__(self, client: redis.Redis, enabled: bool, timeout_s: float = 1.0) -> None:
        self.client = client
        self.enabled = enabled
        self.timeout_s = timeout_s
        self._replicas: int | None = None
        self._checked = -self.CHECK_S
        self._covered_until = 0.0  # results written before this (monotonic) are replicated
        self._quiet_until = 0.0

    def confirmed(self, written_at: float) -> bool:
        """Whether results written by ``written_at`` (monotonic) are safe to acknowledge: on
        a replica, or on a store that has none (False: try again after RETRY_S)."""
        if not self.enabled or written_at < self._covered_until:
            return True
        started = time.monotonic()
        try:
            if started - self._checked > self.CHECK_S:
                self._replicas = connected_replicas(self.client)
                self._checked = started
            if not self._replicas:
                return True
            confirmed = confirm_writes(
                self.client,
                keyspace.durable_mark("worker"),
                self.timeout_s,
                disk=False,
                replicas=self._replicas,
            )
        except redis.exceptions.RedisError as e:
            self._checked = -self.CHECK_S  # the store may have failed over: ask again
            self._warn(
                f"could not confirm results on a replica of the results store ({e}); "
                "their messages are acknowledged once one does"
            )
            return False
        if confirmed.on_replica is False:
            self._checked = -self.CHECK_S  # the replica may be gone (promoted): ask again
            self._warn(
                f"no replica of the results store confirmed this worker's results within "
                f"{self.timeout_s:g} s; their messages are acknowledged once one does"
            )
            return False
        self._covered_until = started
        return True

    def _warn(self, message: str) -> None:
        if time.monotonic() >= self._quiet_until:
            log.warning(message)
            self._quiet_until = time.monotonic() + 10


class Heartbeat(threading.Thread):
    """Renews the leases on the messages the worker holds, and its record in Redis.

    A thread of its own, so that a long forward pass never delays a renewal: a healthy worker
    keeps its messages however long its batches run, and a dead one loses them within a lease.
    """

    def __init__(
        self,
        store: WorkStore,
        info: WorkerInfo,
        period_s: float,
        scheduler: Scheduler,
        flow: FlowControl,
        feeder: Feeder,
        metrics: WorkerMetrics,
    ) -> None:
        super().__init__(name="genq-heartbeat", daemon=True)
        self.feeder = feeder
        self.metrics = metrics
        self.queue = feeder.queue
        self.leases = Leases(feeder.redis)  # kombu's keys: on the broker's Redis
        self.store = store
        self.info = info
        self.period_s = period_s
        self.scheduler = scheduler
        self.flow = flow
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as e:  # Redis away: keep trying, the worker itself reconnects
                log.warning("heartbeat failed: %s", e)
            if self.stopped.wait(self.period_s):
                return

    def beat(self) -> None:
        lost = self.leases.renew(self.scheduler.held_tags())
        # A tag acked since the snapshot is not held any more: release_lost() skips it.
        released, dropped = self.scheduler.release_lost(lost) if lost else ([], 0)
        if released:
            self.flow.lost(len(released))
            log.warning(
                "lease lost on %d message(s) (not renewed for GENQ_LEASE_S): they were requeued "
                "for another worker; %d waiting item(s) dropped here",
                len(released),
                dropped,
            )
        if not self.store.heartbeat(self.info.id, self.period_s):
            self.store.register_worker(self.info, self.period_s)  # e.g. Redis restarted
        # Workers refill as they take messages; this covers a queue that drained while no
        # message was taken (a producer that died between staging and its own refill).
        self.feeder.refill()
        queued = self.feeder.ready_messages()
        if self.flow.stalled(queued):
            log.warning(
                "the consumer took no message for %.0f s while %d wait in the queue: "
                "reconnecting to the broker",
                CONSUMER_STALL_S,
                queued,
            )
            self.flow.reconnect()
        self.metrics.in_flight.set(self.scheduler.unfinished_items())
        view = self.feeder.view()  # last: what a beat must do does not wait on a gauge
        for priority in PRIORITIES:
            self.metrics.queue_depth.labels(priority.value).set(view.items_at(priority))

    def stop(self) -> None:
        self.stopped.set()
