"""How a job's messages reach the queue: staged on the job's pending list for the fair feeder
(:mod:`genq.feeder`), or, with GENQ_SCHEDULING=fifo, pushed onto the Celery queue in order.

To stage, the producer's kombu channel keeps the messages it would queue instead of pushing
them. Celery builds each message (task name, headers, body encoding, delivery tag) exactly as
for a queue; only kombu's last step, the LPUSH onto the queue's list, is replaced. kombu offers
no hook there, so the channel's ``_put`` is overridden (kombu 5.x's Redis channel).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from genq.broker import GENERATE_TASK, celery_app
from genq.feeder import Feeder
from genq.keyspace import OTHER_MESSAGE_PRIORITY, URGENT_MESSAGE_PRIORITY
from genq.schema import Priority, items_in_message
from genq.settings import FEED_BATCH_MESSAGES, Settings
from genq.submissions import NewJob


class StagingChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel; inside :meth:`staging`, messages are kept, not queued."""

    staged: list[str] | None = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self.staged is None:
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
        else:
            self.staged.append(dumps(message))  # type: ignore[no-untyped-call]

    @contextmanager
    def staging(self) -> Iterator[list[str]]:
        """Collect the serialised messages published on this channel meanwhile."""
        self.staged = []
        try:
            yield self.staged
        finally:
            self.staged = None


class StagingTransport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = StagingChannel


class Sender:
    """Sends a job's messages: staged for the fair feeder, or in order onto the queue."""

    def __init__(self, settings: Settings, feeder: Feeder) -> None:
        self.settings = settings
        self.feeder = feeder
        self.celery: Celery = celery_app(settings)
        self.celery.conf.broker_transport = StagingTransport

    def send(self, job_id: str, job: NewJob, messages: Iterable[str]) -> None:
        """Send ``messages`` (serialised work chunks, in the job's order)."""
        if self.settings.scheduling == "fifo":
            self._push(messages)
        else:
            self._stage(job_id, job, messages)

    def _push(self, messages: Iterable[str]) -> None:
        with self.celery.producer_or_acquire() as producer:
            for body in messages:
                self._publish(producer, body, URGENT_MESSAGE_PRIORITY)

    def _stage(self, job_id: str, job: NewJob, messages: Iterable[str]) -> None:
        """FEED_BATCH_MESSAGES per round trip, numbered; stops early if the job has ended
        (cancelled while it was being sent)."""
        # kombu's message priority picks the list a redelivered message goes back to.
        urgent = job.priority is Priority.HIGH
        priority = URGENT_MESSAGE_PRIORITY if urgent else OTHER_MESSAGE_PRIORITY
        with self.celery.producer_or_acquire() as producer, producer.channel.staging() as staged:
            batch: list[tuple[int, str]] = []
            number = 0
            for body in messages:
                self._publish(producer, body, priority)
                batch.append((items_in_message(body), staged.pop()))
                if len(batch) >= FEED_BATCH_MESSAGES:
                    number += 1
                    if not self.feeder.stage(job_id, job.priority, job.tenant, number, batch):
                        return
                    batch = []
            if batch:
                self.feeder.stage(job_id, job.priority, job.tenant, number + 1, batch)

    def _publish(self, producer: Any, body: str, priority: int) -> None:
        self.celery.send_task(
            GENERATE_TASK,
            args=[body],
            queue=self.settings.queue,
            producer=producer,
            priority=priority,
            # Celery repeats up to 1 KB of the arguments in a header for logs.
            argsrepr="",
            kwargsrepr="",
        )
