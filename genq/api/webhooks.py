"""Webhook delivery: the events of ended jobs, signed as Standard Webhooks (OpenAI's scheme).

The Lua scripts that end a job (RECORD, FINISH, EXPIRE) add its id to the outbox
(``genq:webhooks:outbox``, job id -> when due) in the same step as the end, when the job's
record asks for it (a ``notify`` field). A :class:`WebhookSender` takes due entries, asks a
:class:`Resolver` (the API) what to send where, and POSTs it.

At least once: an entry is taken with a claim (CLAIM_DUE pushes its due time WEBHOOK_CLAIM_S
ahead) and removed only after a 2xx answer. A sender that dies mid-delivery (killed, restarted,
Redis away) leaves the entry in the outbox, due again once the claim lapses, for any sender. So
a receiver may see one event more than once: every delivery of an event carries the same
``webhook-id`` (:func:`event_id`), on which receivers deduplicate.

Failures (no 2xx, no connection, a refused target) are retried after WEBHOOK_BACKOFF_S (or a
longer ``Retry-After`` on 429/503, at most an hour) until WEBHOOK_RETRY_FOR_S has passed since
the first attempt; then the event is given up and recorded in ``genq:webhooks:failed``.

Server-side request forgery: every delivery's target is checked first, and the request sent to
the very address that was checked (:mod:`genq.api.webhook_targets`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import httpx
import redis
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from genq import __version__, keyspace, scripts
from genq.api.webhook_targets import checked_target
from genq.errors import WebhookTargetError
from genq.settings import (
    WEBHOOK_BACKOFF_S,
    WEBHOOK_CLAIM_S,
    WEBHOOK_POLL_S,
    WEBHOOK_RETRY_FOR_S,
    WEBHOOK_TIMEOUT_S,
)

log = logging.getLogger(__name__)

USER_AGENT = f"genq-webhooks/{__version__}"
RETRY_AFTER_CAP_S = 3600  # a receiver's Retry-After is honoured up to this long
FAILED_KEPT = 1000  # entries of genq:webhooks:failed kept (newest first)
ERROR_LOG_EVERY_S = 10.0  # the sender thread logs a failing round at most this often


@dataclass(frozen=True)
class Event:
    """One webhook event: ``{"id", "object": "event", "type", "created_at", "data"}``."""

    id: str
    type: str
    created_at: int
    data: dict[str, Any]

    def body(self) -> bytes:
        """The JSON body, as sent and signed."""
        payload: dict[str, Any] = {"id": self.id, "object": "event", "type": self.type}
        payload |= {"created_at": self.created_at, "data": self.data}
        return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Delivery:
    """Send ``event`` to ``url``, signed with ``secret`` (``whsec_<base64>``)."""

    url: str
    secret: str = field(repr=False)
    event: Event


@dataclass(frozen=True)
class Later:
    """Not ready yet (a batch still settling): look again at ``at`` (unix seconds)."""

    at: float


class Resolver(Protocol):
    """What an outbox entry means now: implemented by the API (:mod:`genq.api.events`)."""

    def resolve(self, job_id: str) -> Delivery | Later | None:
        """The delivery for ``job_id``, :class:`Later`, or None: nothing to send (the job is
        gone, or has no target any more), and the entry is dropped."""
        ...


def event_id(job_id: str, type: str) -> str:
    """The id of ``job_id``'s ``type`` event: the same for every redelivery (``webhook-id``)."""
    digest = hashlib.sha256(f"{job_id}\0{type}".encode("utf-8", "surrogatepass")).hexdigest()
    return "evt_" + digest[:32]


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of ``body``. Raises ValueError for a malformed secret."""
    try:
        signer = Webhook(secret)
    except EmptyWebhookSecretError as e:
        raise ValueError("empty webhook secret") from e
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signer.sign(msg_id, when, body.decode()),
    }


class WebhookSender:
    """Delivers the outbox's due events (see the module's docstring for the guarantees).

    ``clock`` is the time for schedules and signatures (tests make time pass with it); ``http``
    a client to send with (default: one without redirects, proxies, cookies or keep-alive)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        resolver: Resolver,
        *,
        allow_private: bool,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
    ) -> None:
        self.redis = redis_client
        self.resolver = resolver
        self.allow_private = allow_private
        self.clock = clock
        self._own_http = http is None
        self.http = http if http is not None else self._new_http()
        self._claim = redis_client.register_script(scripts.CLAIM_DUE)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = float("-inf")

    @staticmethod
    def _new_http() -> httpx.Client:
        # No keep-alive: a connection to a checked address must not carry another host's request.
        limits = httpx.Limits(max_keepalive_connections=0)
        return httpx.Client(follow_redirects=False, trust_env=False, limits=limits)

    def run_once(self, limit: int = 50) -> int:
        """Claim up to ``limit`` due events and handle each; return how many were claimed."""
        now = self.clock()
        reply = self._claim(
            keys=[keyspace.webhook_outbox()], args=[repr(now), WEBHOOK_CLAIM_S, limit]
        )
        claimed = [(str(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]
        # The claim must outlast the deliveries made under it: stop starting new ones in time.
        deadline = now + WEBHOOK_CLAIM_S - 2 * WEBHOOK_TIMEOUT_S
        for n, (job_id, _) in enumerate(claimed):
            if self._stopping.is_set() or self.clock() > deadline:
                with self.redis.pipeline(transaction=True) as pipe:
                    for rest, due in claimed[n:]:
                        pipe.zadd(keyspace.webhook_outbox(), {rest: due}, xx=True)
                    pipe.execute()
                break
            self._handle(job_id)
        return len(claimed)

    def _handle(self, job_id: str) -> None:
        try:
            outcome = self.resolver.resolve(job_id)
        except redis.RedisError:
            raise
        except Exception:
            # Left claimed: tried again once the claim lapses.
            log.exception("webhook: cannot resolve the event of job %s", job_id)
            return
        if outcome is None:
            self._forget(job_id)
        elif isinstance(outcome, Later):
            self.redis.zadd(keyspace.webhook_outbox(), {job_id: outcome.at}, xx=True)
        else:
            error, retry_after = self._deliver(job_id, outcome)
            if error is None:
                self._forget(job_id)
            else:
                self._failed(job_id, outcome, error, retry_after)

    def _deliver(self, job_id: str, delivery: Delivery) -> tuple[str | None, float | None]:
        """POST ``delivery``: (None, None) on a 2xx, else (why, the Retry-After asked)."""
        try:
            target = checked_target(delivery.url, allow_private=self.allow_private)
        except WebhookTargetError as e:
            log.info("webhook for job %s: target refused: %s", job_id, e)
            return str(e), None
        body = delivery.event.body()
        try:
            signed = sign(delivery.secret, delivery.event.id, int(self.clock()), body)
        except ValueError:
            return "the webhook secret is not a whsec_<base64> secret", None
        headers = {
            **signed,
            **target.headers,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        try:
            with self.http.stream(
                "POST",
                target.url,
                content=body,
                headers=headers,
                timeout=WEBHOOK_TIMEOUT_S,
                follow_redirects=False,
                extensions=target.extensions,
            ) as response:  # the answer's body is never read: only its status counts
                status, retry_after = response.status_code, response.headers.get("retry-after")
        except httpx.HTTPError as e:
            log.info("webhook for job %s to %s: %s", job_id, target.host, type(e).__name__)
            return f"{type(e).__name__}: {e}"[:300], None
        finally:
            self.http.cookies.clear()  # receivers never see each other's cookies
        log.info(
            "webhook %s for job %s to %s: HTTP %d", delivery.event.type, job_id, target.host, status
        )
        if 200 <= status < 300:
            return None, None
        wait = _seconds(retry_after) if status in (429, 503) else None
        return f"HTTP {status}", wait

    def _forget(self, job_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keyspace.webhook_outbox(), job_id)
            pipe.hdel(keyspace.webhook_state(), job_id)
            pipe.execute()

    def _failed(
        self, job_id: str, delivery: Delivery, error: str, retry_after: float | None
    ) -> None:
        now = self.clock()
        raw = self.redis.hget(keyspace.webhook_state(), job_id)
        state: dict[str, Any] = json.loads(str(raw)) if raw else {}
        attempts = int(state.get("attempts", 0)) + 1
        first_at = float(state.get("first_at", now))
        if now - first_at >= WEBHOOK_RETRY_FOR_S:
            self._give_up(job_id, delivery, attempts, error, now)
            return
        delay = float(WEBHOOK_BACKOFF_S[min(attempts, len(WEBHOOK_BACKOFF_S)) - 1])
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
        # The last try falls at the end of the retry period, not after it.
        at = min(now + delay, first_at + WEBHOOK_RETRY_FOR_S)
        record = {"attempts": attempts, "first_at": first_at, "last_error": error}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keyspace.webhook_outbox(), {job_id: at}, xx=True)
            pipe.hset(keyspace.webhook_state(), job_id, json.dumps(record))
            pipe.execute()

    def _give_up(
        self, job_id: str, delivery: Delivery, attempts: int, error: str, now: float
    ) -> None:
        entry = {
            "job_id": job_id,
            "event_id": delivery.event.id,
            "url": delivery.url,
            "attempts": attempts,
            "last_error": error,
            "at": now,
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keyspace.webhook_outbox(), job_id)
            pipe.hdel(keyspace.webhook_state(), job_id)
            pipe.lpush(keyspace.webhook_failed(), json.dumps(entry))
            pipe.ltrim(keyspace.webhook_failed(), 0, FAILED_KEPT - 1)
            pipe.execute()
        log.warning(
            "webhook %s for job %s to %s given up after %d attempts (last: %s); kept in %s",
            delivery.event.type,
            job_id,
            _host(delivery.url),
            attempts,
            error,
            keyspace.webhook_failed(),
        )

    def start(self) -> None:
        """Run :meth:`run_once` in a daemon thread every WEBHOOK_POLL_S until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._own_http and self.http.is_closed:
            self.http = self._new_http()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="genq-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = WEBHOOK_TIMEOUT_S + 1) -> None:
        """Stop the thread: at once when idle, else after the delivery in flight (an event
        cut off is delivered again after its claim lapses)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return
            self._thread = None
        if self._own_http:
            self.http.close()

    def _loop(self, limit: int = 50) -> None:
        while not self._stopping.is_set():
            busy = False
            try:
                busy = self.run_once(limit) >= limit
            except Exception as e:  # the thread must outlive any failure, Redis's above all
                if time.monotonic() - self._last_error_log >= ERROR_LOG_EVERY_S:
                    self._last_error_log = time.monotonic()
                    if isinstance(e, redis.RedisError):
                        log.warning("webhook sender: Redis error (retrying): %s", e)
                    else:
                        log.exception("webhook sender: unexpected error (retrying)")
            if not busy:
                self._stopping.wait(WEBHOOK_POLL_S)


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host[:100] or "?"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "?"


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After given in seconds; None for none, a date or nonsense."""
    try:
        value = float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < float("inf") else None
