"""The webhook sender on real parts: a real Redis, a real HTTP receiver on loopback, and the
official ``openai`` client verifying what arrives. Time passes by an injected clock."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import redis
from conftest import RedisProcess, free_port
from standardwebhooks.webhooks import Webhook

from genq import keyspace
from genq.api import webhook_targets
from genq.api.webhook_targets import check_target
from genq.api.webhooks import (
    Delivery,
    Event,
    Later,
    WebhookSender,
    event_id,
    new_secret,
)
from genq.errors import WebhookTargetError
from genq.settings import (
    WEBHOOK_BACKOFF_S,
    WEBHOOK_CLAIM_S,
    WEBHOOK_POLL_S,
    WEBHOOK_RETRY_FOR_S,
)
from genq.submissions import SubmissionStore

SECRET = new_secret()
OUTBOX, STATE, FAILED = (
    keyspace.webhook_outbox(),
    keyspace.webhook_state(),
    keyspace.webhook_failed(),
)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers with ``statuses`` in turn (the last one repeated)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    extra_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                n = min(len(receiver.requests), len(receiver.statuses)) - 1
                self.send_response(receiver.statuses[n])
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Resolver:
    """Answers each job id from a table (a Delivery to ``url`` by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: dict[str, Delivery | Later | None] = {}
        self.calls: list[str] = []

    def delivery(self, job_id: str) -> Delivery:
        kind = "batch.completed"
        event = Event(event_id(job_id, kind), kind, int(time.time()), {"id": "batch_" + job_id})
        return Delivery(url=self.url, secret=SECRET, event=event)

    def resolve(self, job_id: str) -> Delivery | Later | None:
        self.calls.append(job_id)
        return self.answers[job_id] if job_id in self.answers else self.delivery(job_id)


@pytest.fixture
def client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.delete(OUTBOX, STATE, FAILED)
    yield r
    r.delete(OUTBOX, STATE, FAILED)
    r.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver().start()
    yield hooks
    hooks.stop()


def job_id() -> str:
    return "j" + uuid.uuid4().hex[:12]


def queue(client: redis.Redis, at: float) -> str:
    ident = job_id()
    client.zadd(OUTBOX, {ident: at})
    return ident


def state(client: redis.Redis, ident: str) -> dict[str, Any] | None:
    raw = client.hget(STATE, ident)
    return json.loads(str(raw)) if raw else None


def verify(received: Received) -> Any:
    return openai.OpenAI(api_key="x", webhook_secret=SECRET).webhooks.unwrap(
        received.body, received.headers
    )


def test_an_event_is_delivered_signed_and_the_openai_client_verifies_it(
    client: redis.Redis, receiver: Receiver
) -> None:
    ident = queue(client, time.time())
    sender = WebhookSender(client, Resolver(receiver.url), allow_private=True)
    assert sender.run_once() == 1
    (got,) = receiver.requests
    event = verify(got)
    assert (event.type, event.data.id) == ("batch.completed", "batch_" + ident)
    assert got.headers["webhook-id"] == event.id == event_id(ident, "batch.completed")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("genq-webhooks/")
    assert json.loads(got.body)["object"] == "event"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="x", webhook_secret=new_secret()).webhooks.unwrap(
            got.body, got.headers
        )
    assert client.zscore(OUTBOX, ident) is None
    assert state(client, ident) is None
    assert sender.run_once() == 0


def test_a_failed_delivery_is_redelivered_after_the_backoff_with_the_same_id(
    client: redis.Redis, receiver: Receiver
) -> None:
    receiver.statuses = [500, 200]
    clock = Clock()
    start = clock.now
    ident = queue(client, start)
    sender = WebhookSender(client, Resolver(receiver.url), allow_private=True, clock=clock)
    sender.run_once()
    assert len(receiver.requests) == 1
    assert state(client, ident) == {"attempts": 1, "first_at": start, "last_error": "HTTP 500"}
    assert client.zscore(OUTBOX, ident) == pytest.approx(start + WEBHOOK_BACKOFF_S[0])
    clock.now = start + WEBHOOK_BACKOFF_S[0] - 1
    assert sender.run_once() == 0  # not yet due
    clock.now = start + WEBHOOK_BACKOFF_S[0]
    assert sender.run_once() == 1
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) == int(clock.now)
    assert verify(second).data.id == "batch_" + ident
    assert client.zscore(OUTBOX, ident) is None
    assert state(client, ident) is None


def test_the_backoff_schedule_is_kept_then_the_event_is_given_up_after_a_day(
    client: redis.Redis, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500]
    clock = Clock()
    start = clock.now
    ident = queue(client, start)
    resolver = Resolver(receiver.url)
    sender = WebhookSender(client, resolver, allow_private=True, clock=clock)
    delays: list[float] = []
    with caplog.at_level(logging.WARNING, logger="genq.api.webhooks"):
        while (due := client.zscore(OUTBOX, ident)) is not None:
            if clock.now != due:
                delays.append(due - clock.now)
                clock.now = due
            assert sender.run_once() == 1
            assert len(delays) < 50
    expected = list(WEBHOOK_BACKOFF_S)
    while sum(expected) + WEBHOOK_BACKOFF_S[-1] < WEBHOOK_RETRY_FOR_S:
        expected.append(WEBHOOK_BACKOFF_S[-1])
    expected.append(WEBHOOK_RETRY_FOR_S - sum(expected))  # the last try ends the day
    assert delays == pytest.approx(expected)
    assert clock.now == pytest.approx(start + WEBHOOK_RETRY_FOR_S)
    assert len(receiver.requests) == len(expected) + 1
    assert state(client, ident) is None
    (entry,) = [json.loads(e) for e in client.lrange(FAILED, 0, -1)]
    assert entry == {
        "job_id": ident,
        "event_id": event_id(ident, "batch.completed"),
        "url": receiver.url,
        "attempts": len(expected) + 1,
        "last_error": "HTTP 500",
        "at": pytest.approx(clock.now),
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert ident in warnings[0].getMessage()
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("status", "retry_after", "delay"),
    [
        (429, "600", 600),
        (503, "999999", 3600),
        (500, "600", WEBHOOK_BACKOFF_S[0]),
        (503, "soon", 5),
    ],
)
def test_retry_after_is_honoured_on_429_and_503_up_to_an_hour(
    client: redis.Redis, receiver: Receiver, status: int, retry_after: str, delay: float
) -> None:
    receiver.statuses, receiver.extra_headers = [status], {"retry-after": retry_after}
    clock = Clock()
    ident = queue(client, clock.now)
    WebhookSender(client, Resolver(receiver.url), allow_private=True, clock=clock).run_once()
    assert client.zscore(OUTBOX, ident) == pytest.approx(clock.now + delay)


def test_a_redirect_is_not_followed(client: redis.Redis, receiver: Receiver) -> None:
    receiver.statuses, receiver.extra_headers = [302], {"location": "http://127.0.0.1:1/x"}
    ident = queue(client, time.time())
    WebhookSender(client, Resolver(receiver.url), allow_private=True).run_once()
    assert len(receiver.requests) == 1
    record = state(client, ident)
    assert record is not None
    assert record["last_error"] == "HTTP 302"


def test_later_reschedules_without_counting_an_attempt(
    client: redis.Redis, receiver: Receiver
) -> None:
    clock = Clock()
    ident = queue(client, clock.now)
    resolver = Resolver(receiver.url)
    resolver.answers[ident] = Later(clock.now + 30)
    sender = WebhookSender(client, resolver, allow_private=True, clock=clock)
    assert sender.run_once() == 1
    assert client.zscore(OUTBOX, ident) == pytest.approx(clock.now + 30)
    assert state(client, ident) is None
    assert receiver.requests == []
    del resolver.answers[ident]
    clock.now += 30
    assert sender.run_once() == 1
    assert len(receiver.requests) == 1
    assert client.zscore(OUTBOX, ident) is None


def test_none_drops_the_entry_and_its_state(client: redis.Redis, receiver: Receiver) -> None:
    ident = queue(client, time.time())
    client.hset(STATE, ident, json.dumps({"attempts": 2, "first_at": 1.0, "last_error": "x"}))
    resolver = Resolver(receiver.url)
    resolver.answers[ident] = None
    WebhookSender(client, resolver, allow_private=True).run_once()
    assert client.zscore(OUTBOX, ident) is None
    assert state(client, ident) is None
    assert receiver.requests == []


class Killed(BaseException):
    """The process dies mid-delivery (nothing in it catches this)."""


def test_an_event_a_dead_sender_claimed_is_delivered_by_the_next_after_the_claim(
    client: redis.Redis, receiver: Receiver
) -> None:
    clock = Clock()
    ident = queue(client, clock.now)

    class Dying(Resolver):
        def resolve(self, job_id: str) -> Delivery | Later | None:
            raise Killed

    with pytest.raises(Killed):
        WebhookSender(client, Dying(receiver.url), allow_private=True, clock=clock).run_once()
    restarted = WebhookSender(client, Resolver(receiver.url), allow_private=True, clock=clock)
    clock.now += WEBHOOK_CLAIM_S - 1
    assert restarted.run_once() == 0  # still claimed by the dead one
    assert receiver.requests == []
    clock.now += 1
    assert restarted.run_once() == 1
    (got,) = receiver.requests
    assert verify(got).data.id == "batch_" + ident
    assert client.zscore(OUTBOX, ident) is None


def test_a_refused_target_counts_as_a_failed_attempt(
    client: redis.Redis, receiver: Receiver
) -> None:
    clock = Clock()
    ident = queue(client, clock.now)
    WebhookSender(client, Resolver(receiver.url), allow_private=False, clock=clock).run_once()
    assert receiver.requests == []
    record = state(client, ident)
    assert record is not None
    assert record["attempts"] == 1
    assert "GENQ_WEBHOOK_ALLOW_PRIVATE=1" in record["last_error"]
    assert client.zscore(OUTBOX, ident) == pytest.approx(clock.now + WEBHOOK_BACKOFF_S[0])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://127.1/",  # inet_aton forms resolve to loopback too
        "https://10.0.0.5/hook",
        "http://172.16.3.4/",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
        "http://169.254.169.254/latest/meta-data/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://0.0.0.0:8000/",
        "http://[::1]/hook",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[ff02::1]/",
        "https://hooks.genq-test.invalid/hook",
    ],
)
def test_check_target_refuses_non_global_and_unresolvable_hosts(url: str) -> None:
    with pytest.raises(WebhookTargetError) as refused:
        check_target(url, allow_private=False)
    message = str(refused.value)
    assert "\n" not in message
    assert "GENQ_WEBHOOK_ALLOW_PRIVATE=1" in message or "does not resolve" in message
    check_target(url, allow_private=True)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "http://", "http:///path", "mailto:a@b.c", "http://x:99999/"]
)
def test_check_target_refuses_what_is_not_an_http_url_even_when_private_is_allowed(
    url: str,
) -> None:
    with pytest.raises(WebhookTargetError):
        check_target(url, allow_private=True)


def test_check_target_names_the_address_and_what_to_do() -> None:
    with pytest.raises(WebhookTargetError, match=r"169\.254\.169\.254.*link-local.*trusted"):
        check_target("http://169.254.169.254/", allow_private=False)


@pytest.mark.parametrize(
    "url", ["https://93.184.216.34/hook", "http://93.184.216.34:8080/x", "https://[2606:4700::1]/"]
)
def test_check_target_accepts_public_addresses(url: str) -> None:
    check_target(url, allow_private=False)


def test_a_delivery_goes_to_the_address_checked_not_to_a_second_lookup(
    client: redis.Redis, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: a name that answers a harmless address to the check and another one to
    # the connection. Loopback stands in for "harmless" here: the receiver lives there.
    real_lookup = socket.getaddrinfo
    lookups: list[str] = []

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebind.test":
            return real_lookup(host, *args, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror("rebound")
        return real_lookup("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    checked: list[Any] = []  # the addresses the SSRF check was asked about
    monkeypatch.setattr(webhook_targets, "_why_not_global", checked.append)
    resolver = Resolver(f"http://hooks.rebind.test:{receiver.port}/hook")
    ident = queue(client, time.time())
    WebhookSender(client, resolver, allow_private=False).run_once()
    (got,) = receiver.requests
    assert lookups == ["hooks.rebind.test"]
    assert [str(address) for address in checked] == ["127.0.0.1"]  # the name was checked
    assert got.headers["host"] == f"hooks.rebind.test:{receiver.port}"
    assert verify(got).data.id == "batch_" + ident


def test_event_body_ids_and_secrets() -> None:
    event = Event(event_id("j1", "batch.failed"), "batch.failed", 1700000000, {"id": "batch_j1"})
    assert event.body() == (
        b'{"id":"%s","object":"event","type":"batch.failed","created_at":1700000000,'
        b'"data":{"id":"batch_j1"}}' % event.id.encode()
    )
    assert event.id == event_id("j1", "batch.failed") != event_id("j1", "batch.completed")
    assert event.id.startswith("evt_")
    assert len(event.id) == 36
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert secret != new_secret()
    Webhook(secret)  # a secret standardwebhooks accepts
    assert secret not in repr(Delivery("https://example.com", secret, event))


def test_the_thread_delivers_within_seconds_and_stops_promptly(
    client: redis.Redis, receiver: Receiver
) -> None:
    sender = WebhookSender(client, Resolver(receiver.url), allow_private=True)
    sender.start()
    try:
        queue(client, time.time())
        deadline = time.monotonic() + 5
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(receiver.requests) == 1
    finally:
        began = time.monotonic()
        sender.stop()
    assert time.monotonic() - began < 1
    assert sender._thread is None


def test_the_thread_outlives_redis_errors_and_logs_them_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, decode_responses=True)
    sender = WebhookSender(dead, Resolver("http://127.0.0.1:1/"), allow_private=True)
    with caplog.at_level(logging.WARNING, logger="genq.api.webhooks"):
        sender.start()
        time.sleep(2.5 * WEBHOOK_POLL_S)
        assert sender._thread is not None
        assert sender._thread.is_alive()
        sender.stop()
    assert len([r for r in caplog.records if "Redis error" in r.getMessage()]) == 1


def test_a_job_that_ends_is_put_in_the_outbox_by_the_script_that_ends_it(
    client: redis.Redis,
) -> None:
    notified, silent = job_id(), job_id()
    for ident in (notified, silent):
        fields: dict[Any, str | int] = {"id": ident, "status": "running", "total": 1}
        fields |= {"completed": 0, "failed": 0}
        fields["created_at"] = repr(time.time())  # SubmissionStore.cancel reads the record back
        if ident == notified:
            fields["notify"] = "1"
        client.hset(keyspace.job(ident), mapping=fields)
        SubmissionStore(client, 3600).cancel(ident)
        assert client.hget(keyspace.job(ident), "status") == "cancelled"
    assert client.zscore(OUTBOX, notified) is not None
    assert client.zscore(OUTBOX, silent) is None
