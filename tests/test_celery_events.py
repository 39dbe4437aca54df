"""Celery's own tools: with GENQ_CELERY_EVENTS=1 a real genq worker answers `celery inspect
ping` and sends the events Flower reads (heartbeats, a task per message), through a Redis
whose only user for genq is the documented ACL (keys under genq:, the two pub/sub channel
patterns); off by default, when no remote control reaches a worker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, RedisProcess, StartWorker, WorkerProcess
from tlsutil import SecuredRedis

from genq.broker import celery_app
from genq.producer.client import Client
from genq.settings import Settings

PASSWORD = "genq-Ev3nts-4c1e"
# README's ACL line for GENQ_CELERY_EVENTS=1 (database 0): the least-privilege user of
# test_security.py plus Pub/Sub on kombu's fanout channels under genq's key prefix, the
# events' (`celeryev`) and remote control's (`celery.pidbox`), and TIME, which kombu's script
# that keeps the bindings of expiring queues (remote control's) alive calls.
EVENTS_USER = (
    f"genq on >{PASSWORD} ~genq:* resetchannels &genq:celery:/0.celeryev/* "
    "&genq:celery:/0.celery.pidbox -@all +@read +@write +@scripting +@connection "
    "+@transaction +@pubsub -@dangerous +info +time"
)
PROMPT = "a prompt that no event may carry 5e1f"


@pytest.fixture(scope="module")
def events_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    server = SecuredRedis(tmp_path_factory.mktemp("events-redis"), (EVENTS_USER,))
    server.start()
    yield server
    server.stop()


def celery_hostname(worker: WorkerProcess) -> str:
    """The worker's Celery node name (``genq-<worker id>@<host>``)."""
    found = re.search(r"genq worker (\S+) ready", worker.output())
    assert found, worker.output()
    return f"genq-{found.group(1)}@{socket.gethostname()}"


class EventLog:
    """Celery's event receiver on a thread, as Flower runs it (every event, ``wakeup``: each
    worker is asked for a heartbeat at once)."""

    def __init__(self, settings: Settings) -> None:
        self.app = celery_app(settings)
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            with contextlib.suppress(TimeoutError):  # no event for a minute
                self.receiver.capture(limit=None, timeout=60, wakeup=True)

    def wait_for(self, kind: str, hostname: str, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event["type"] == kind and event.get("hostname") == hostname:
                    return event
            time.sleep(0.1)
        pytest.fail(f"no {kind} event from {hostname}: {[e['type'] for e in self.events]}")

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def test_with_events_on_inspect_ping_and_an_event_receiver_see_the_worker(
    events_redis: SecuredRedis, start_worker: StartWorker
) -> None:
    url = events_redis.url(f"genq:{PASSWORD}")
    settings = Settings(redis_url=url, queue="events-on")
    with events_redis.admin() as admin:
        admin.acl_log_reset()
    worker = start_worker(redis_url=url, engine="null", queue="events-on", celery_events="1")
    try:
        hostname = celery_hostname(worker)
        # What `celery inspect ping` does, from an app on genq's broker settings.
        assert celery_app(settings).control.inspect(timeout=5).ping() == {hostname: {"ok": "pong"}}
        events = EventLog(settings)
        try:
            # The receiver asks every worker for a heartbeat once it listens: events sent
            # before that are lost (Pub/Sub keeps nothing), so the job starts after it.
            heartbeat = events.wait_for("worker-heartbeat", hostname)
            client = Client(settings=settings)
            job_id = client.submit([f"{PROMPT} {i}" for i in range(6)], {"max_new_tokens": 2})
            assert client.wait(job_id, timeout_s=60).completed == 6
            received = events.wait_for("task-received", hostname)
            succeeded = events.wait_for("task-succeeded", hostname)
        finally:
            events.stop()
        assert heartbeat["freq"] > 0  # Flower counts the worker offline after a missed beat
        # Each message is a task to Flower: received when admitted, succeeded when acked,
        # named by its job and item count, never by its prompts.
        assert received["name"] == "genq.generate"
        assert received["args"] == f"job={job_id} items=6"
        assert succeeded["uuid"] == received["uuid"]
        assert succeeded["runtime"] >= 0
        assert {e["type"] for e in events.events} <= {
            "worker-online",
            "worker-heartbeat",
            "worker-offline",
            "task-received",
            "task-succeeded",
        }
        assert PROMPT not in json.dumps(events.events, default=str)
        # The command line, as an operator runs it (the app from GENQ_* variables).
        ping = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "genq.broker", "inspect", "ping"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "GENQ_REDIS_URL": url},
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert f"{hostname}: OK" in ping.stdout
        with events_redis.admin() as admin:
            assert admin.acl_log() == []  # the documented ACL line is all it took
    finally:
        worker.stop()


def test_by_default_a_worker_answers_no_remote_control(
    redis_server: RedisProcess, start_worker: StartWorker
) -> None:
    worker = start_worker(engine="null", queue="events-off")
    try:
        settings = Settings(redis_url=redis_server.url, queue="events-off")
        assert celery_app(settings).control.inspect(timeout=2).ping() is None
        client = Client(settings=settings)
        assert client.wait(client.submit(["hi"]), timeout_s=60).completed == 1  # it works
    finally:
        worker.stop()
