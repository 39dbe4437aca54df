"""The worker's guard: no queue message can stop a worker or reach a job it does not match.

A message can go wrong at three depths, and each is caught where it is first seen:

* **bytes** (kombu's Redis channel): larger than MAX_MESSAGE_BYTES, not JSON, nested too deep,
  or not a kombu envelope (a JSON list, a body that is not base64, a delivery tag that is not
  text). kombu would raise inside the consumer's event loop, which stops the worker; here the
  message is refused before kombu takes it in (it holds no lease yet, so there is nothing to ack);
* **task** (Celery's consumer): any task name other than genq's (Celery's built-ins such as
  ``celery.chord_unlock`` included), content kombu cannot decode, or anything Celery's own
  handlers would reject or crash on: refused and acknowledged;
* **chunk** (the genq task, :mod:`genq.worker.app` and :meth:`BatchRunner.admit`): a body that
  is not a work chunk, or a chunk that does not match its job's record.

Every refused message is logged once, on one line, and kept with its reason in the bounded
dead-letter list (``genq dead``); no job is changed by it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import RedisError

from genq.broker import GENERATE_TASK
from genq.dead_letters import DeadLetterList
from genq.schema import DeadLetter, utcnow
from genq.settings import DEAD_LETTER_MESSAGE_CHARS, MAX_MESSAGE_BYTES
from genq.worker.qos import RidingQoS

log = logging.getLogger("genq.worker")

_REASON_CHARS = 500


class DeadLetters:
    """Refuses messages: one log line each, and an entry in the dead-letter list."""

    def __init__(
        self, store: DeadLetterList, worker_id: str, queue: str, on_refused: Callable[[], None]
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.queue = queue
        self.on_refused = on_refused  # a refused message is activity too (stall watchdog)

    def refuse(
        self,
        raw: str,
        reason: str,
        *,
        size: int | None = None,
        task: str | None = None,
        job_id: str | None = None,
    ) -> None:
        """Keep ``raw`` (the message as text) with ``reason``; never raises."""
        self.on_refused()
        reason = " ".join(reason.split())[:_REASON_CHARS]
        log.error("refused a message (dead-lettered, see `genq dead`): %s", reason)
        try:
            letter = DeadLetter(
                at=utcnow(),
                reason=reason,
                queue=self.queue,
                worker_id=self.worker_id,
                task=task[:200] if task else None,
                job_id=job_id,
                # Lone surrogates (from JSON escapes) could not be written back as JSON.
                message=raw[:DEAD_LETTER_MESSAGE_CHARS].encode("utf-8", "replace").decode(),
                message_bytes=len(raw) if size is None else size,
            )
            self.store.add_dead_letter(letter)
        except RedisError as e:
            log.warning("could not keep the refused message in the dead-letter list: %s", e)


def envelope_problem(payload: Any) -> str | None:
    """What makes ``payload`` (a decoded queue item) unusable as a kombu message, or None.

    These are the fields kombu's channel and QoS read before any handler of Celery's runs;
    a wrong type among them raises in the consumer's event loop.
    """
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return "the envelope's delivery_tag is not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(k), str) for k in ("exchange", "routing_key")
    ):
        return "the envelope's delivery_info lacks exchange and routing_key"
    headers = payload.get("headers") or {}
    if not isinstance(headers, dict):
        return "the envelope's headers are not an object"
    if headers.get("compression"):
        # kombu would decompress the body without a bound (a small zlib bomb is gigabytes);
        # genq producers never compress.
        return "the body is compressed (genq messages never are)"
    if properties.get("body_encoding", "base64") != "base64":
        return f"unknown body encoding {str(properties.get('body_encoding'))[:40]!r}"
    if not isinstance(properties.get("priority", 0), int):
        return "the envelope's priority is not an integer"
    if not isinstance(payload.get("body", ""), str):
        return "the envelope's body is not a string"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key) or "", str):
            return f"the envelope's {key} is not a string"
    return None


class GuardedChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, refusing queue items it would crash on (see the module doc).

    ``_brpop_read`` and ``_get`` are kombu 5.7's own, with the item checked between popping it
    and delivering it: kombu offers no hook there, and its ``loads`` runs in between.
    """

    QoS = RidingQoS
    leases_ride = False  # True: each message's lease is written in its admission (RidingQoS)
    refuse: Callable[..., None] = staticmethod(lambda *a, **k: None)
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new client (and its table of ~170 reply callbacks, ~0.2 ms) for each
        # lease it writes and each ack: two per message. One client per connection pool does
        # the same work; the pool, not the client, holds the connections.
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                payload = self._checked(item)
                if payload is not None:
                    self.connection._deliver(payload, dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: Any = None) -> Any:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    payload = self._checked(item)
                    if payload is not None:
                        return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _checked(self, item: bytes | str) -> dict[str, Any] | None:
        """The decoded item, or None after refusing it."""
        size = len(item)
        if size > MAX_MESSAGE_BYTES:
            head = item[:DEAD_LETTER_MESSAGE_CHARS]
            self.refuse(
                head.decode("utf-8", "replace") if isinstance(head, bytes) else head,
                f"the message is {size} bytes, over the limit of {MAX_MESSAGE_BYTES} "
                "(genq producers never send one that large)",
                size=size,
            )
            return None
        text = bytes_to_str(item) if isinstance(item, bytes) else item
        try:
            payload = loads(text)
        # kombu's object hook raises AttributeError and more for {"__type__": ...} values.
        except Exception as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else f"not JSON ({e})"
            self.refuse(text, f"the message is {why}", size=size)
            return None
        problem = envelope_problem(payload)
        if problem is None:
            try:
                self.Message(payload, channel=self)  # decodes the body as kombu will
            except Exception as e:
                problem = f"the body cannot be decoded ({type(e).__name__}: {e})"
        if problem is not None:
            self.refuse(text, f"not a kombu message: {problem}", size=size)
            return None
        result: dict[str, Any] = payload
        return result


def guarded_transport(
    dead: DeadLetters, sentinel: bool = False, leases_ride: bool = False
) -> type[kombu_redis.Transport]:
    """kombu's Redis transport with :class:`GuardedChannel`, refusing into ``dead``; its
    Sentinel transport (the primary found through the Sentinels) when ``sentinel``;
    ``leases_ride``: each message's lease is written by its admission (:mod:`genq.worker.qos`),
    where the broker is the results store."""
    ride = leases_ride

    if sentinel:

        class SentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
            refuse = staticmethod(dead.refuse)
            leases_ride = ride

        class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
            pass

        SentinelTransport.Channel = SentinelChannel
        return SentinelTransport

    class Channel(GuardedChannel):
        refuse = staticmethod(dead.refuse)
        leases_ride = ride

    class Transport(kombu_redis.Transport):  # type: ignore[misc]
        pass

    Transport.Channel = Channel
    return Transport


def message_text(message: Any) -> str:
    """A received message as text for the dead-letter list: headers and body."""
    try:
        body = message.body[:DEAD_LETTER_MESSAGE_CHARS]  # never the whole of a huge body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        return json.dumps({"headers": message.headers, "body": body}, default=str)
    except Exception:  # whatever the message holds, refusing it must not fail
        return repr(getattr(message, "_raw", message))


def guarded_consumer(dead: DeadLetters) -> type[Consumer]:
    """Celery's consumer that runs genq's task alone and refuses every other message."""

    class GuardedConsumer(Consumer):  # type: ignore[misc]
        def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
            handle = super().create_task_handler(*args, **kwargs)

            def on_task_received(message: Any) -> None:
                headers = message.headers
                task = headers.get("task") if isinstance(headers, dict) else None
                if task != GENERATE_TASK:
                    reason = (
                        f"task {str(task)[:80]!r} is not genq's ({GENERATE_TASK} alone runs here)"
                        if task
                        else "the message names no task (not a Celery protocol 2 message)"
                    )
                    self.refuse(message, reason)
                    return
                try:
                    handle(message)
                except MemoryError:
                    raise
                except Exception as e:
                    self.refuse(message, f"{type(e).__name__}: {e}")

            return on_task_received

        def refuse(self, message: Any, reason: str) -> None:
            headers = message.headers if isinstance(message.headers, dict) else {}
            dead.refuse(message_text(message), reason, task=_text(headers.get("task")))
            message.ack_log_error(log, self.connection_errors)

        # Celery's own handlers for bad messages reject them, and one of them stores a
        # failure in the (disabled) result backend; genq keeps them instead.
        def on_unknown_message(self, body: Any, message: Any) -> None:
            self.refuse(message, "not a Celery task message")

        def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
            self.refuse(message, f"unknown task ({exc})")

        def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
            self.refuse(message, f"invalid task message ({type(exc).__name__}: {exc})")

        def on_decode_error(self, message: Any, exc: Exception) -> None:
            self.refuse(message, f"the body cannot be decoded ({type(exc).__name__}: {exc})")

    return GuardedConsumer


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
