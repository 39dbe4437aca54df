"""Hostile queue messages against real workers: none stops a worker or touches a real job.

Messages are pushed straight into the queue's Redis list (as `redis-cli LPUSH` would), or sent
through Celery with other task names and bodies. Two workers serve the queue, so that a message
that stopped one would also show as a stalled job.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import StartWorker, WorkerProcess

from genq import keyspace, leases
from genq.broker import GENERATE_TASK
from genq.producer.client import Client
from genq.producer.enqueueing import new_job_id
from genq.schema import DeadLetter
from genq.settings import MAX_CHUNK_ITEMS, MAX_MESSAGE_BYTES, Settings

QUEUE = "hostile"
PICKLE = "application/x-python-serialize"


@pytest.fixture(scope="module")
def hostile_workers(start_worker: StartWorker) -> list[WorkerProcess]:
    return [start_worker(queue=QUEUE, engine="null", max_wait_ms="20") for _ in range(2)]


@pytest.fixture
def hostile(settings: Settings, hostile_workers: list[WorkerProcess]) -> Iterator[Client]:
    client = Client(settings=settings.model_copy(update={"queue": QUEUE}))
    yield client
    assert all(w.process.poll() is None for w in hostile_workers), "a worker stopped"


def envelope(content: str, task: str = GENERATE_TASK, **changes: object) -> dict[str, object]:
    """A kombu/Celery protocol-2 envelope as producers write it, with ``changes`` applied."""
    tag = str(uuid.uuid4())
    message: dict[str, object] = {
        "body": base64.b64encode(content.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": tag, "root_id": tag, "retries": 0},
        "properties": {
            "correlation_id": tag,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }
    message.update(changes)
    return message


def call(chunk: object) -> str:
    """A genq.generate body (args, kwargs, embed) whose one argument is ``chunk``."""
    return json.dumps([[chunk if isinstance(chunk, str) else json.dumps(chunk)], {}, {}])


def push(client: Client, *raw: str | bytes) -> None:
    client.store.redis.lpush(keyspace.celery_queue(QUEUE), *raw)


def dead_since(client: Client, since: float) -> list[DeadLetter]:
    letters = client.dead_letters(limit=1000)
    return [d for d in letters if d.queue == QUEUE and d.at.timestamp() >= since]


def wait_for_dead(client: Client, since: float, count: int) -> list[DeadLetter]:
    deadline = time.monotonic() + 60
    while len(letters := dead_since(client, since)) < count:
        assert time.monotonic() < deadline, [d.reason for d in letters]
        time.sleep(0.1)
    return letters


def assert_queue_drained(client: Client) -> None:
    r = client.store.redis
    assert r.llen(keyspace.celery_queue(QUEUE)) == 0
    held = r.hvals(leases.unacked_key())
    assert not [h for h in held if f'"routing_key": "{QUEUE}"' in h], "a message is still held"


def run_real_job(client: Client, n: int = 12) -> None:
    job_id = client.submit([f"real prompt {i}" for i in range(n)], {"max_new_tokens": 4})
    info = client.wait(job_id, timeout_s=60)
    assert (info.status.value, info.completed, info.failed) == ("completed", n, 0)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(n))
    assert client.store.redis.hlen(keyspace.results(job_id)) == n


RAW_MESSAGES: dict[str, tuple[Callable[[], str | bytes], str]] = {
    "not-json": (lambda: "not json", "not JSON"),
    "json-list-envelope": (lambda: "[1, 2, 3]", "JSON list"),
    "json-string-envelope": (lambda: '"hello"', "JSON str"),
    "no-properties": (lambda: json.dumps({"body": "e30="}), "no 'properties'"),
    "delivery-tag-a-list": (
        lambda: json.dumps(
            envelope(call("{}"), properties={"delivery_tag": [1], "delivery_info": {}})
        ),
        "delivery_tag",
    ),
    "no-delivery-info": (
        lambda: json.dumps(envelope(call("{}"), properties={"delivery_tag": "t"})),
        "delivery_info",
    ),
    "body-not-base64": (lambda: json.dumps(envelope("", body="YQ=")), "cannot be decoded"),
    "nested-100000-deep": (lambda: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "invalid-utf8": (lambda: b"\xff\xfe{not utf8", "not"),
    "headers-a-list": (lambda: json.dumps(envelope(call("{}"), headers=[1])), "headers"),
    "kombu-typed-bytes": (
        lambda: json.dumps(
            envelope(call("{}"), headers={"x": {"__type__": "bytes", "__value__": 1}})
        ),
        "not JSON",
    ),
    "kombu-typed-uuid": (
        lambda: json.dumps(envelope(call("{}"), x={"__type__": "uuid", "__value__": {"hex": 5}})),
        "not JSON",
    ),
    "zlib-bomb": (
        lambda: json.dumps(
            envelope(
                "",
                headers={"task": GENERATE_TASK, "compression": "application/x-gzip"},
                body=base64.b64encode(zlib.compress(b"0" * 50_000_000)).decode(),
            )
        ),
        "compressed",
    ),
    "body-not-json": (lambda: json.dumps(envelope("}{")), "cannot be decoded"),
    "body-nested-deep": (lambda: json.dumps(envelope("[" * 50_000 + "]" * 50_000)), "decoded"),
    "no-task-header": (lambda: json.dumps(envelope(call("{}"), headers={})), "names no task"),
    "celery-builtin-task": (
        lambda: json.dumps(envelope(call("{}"), task="celery.chord_unlock")),
        "'celery.chord_unlock' is not genq's",
    ),
    "task-name-a-list": (
        lambda: json.dumps(envelope(call("{}"), headers={"task": ["genq.generate"]})),
        "is not genq's",
    ),
    "pickle-content-type": (
        lambda: json.dumps(
            envelope(call("{}"), **{"content-type": "application/x-python-serialize"})
        ),
        "pickle",
    ),
    "args-not-a-list": (lambda: json.dumps(envelope(json.dumps({"a": 1}))), "not a genq.generate"),
    "chunk-not-a-string": (
        lambda: json.dumps(envelope(json.dumps([[{"job_id": "x"}], {}, {}]))),
        "not a genq.generate",
    ),
    "chunk-of-another-version": (
        lambda: json.dumps(envelope(call({"job_id": "x", "enqueued_at": 0, "items": [{"t": 1}]}))),
        "same genq version",
    ),
    "chunk-too-many-items": (
        lambda: json.dumps(
            envelope(
                call(
                    {
                        "job_id": "x",
                        "enqueued_at": 0,
                        "items": [{"index": i, "prompt": "p"} for i in range(MAX_CHUNK_ITEMS + 1)],
                    }
                )
            )
        ),
        "items",
    ),
    "chunk-for-an-unknown-job": (
        lambda: json.dumps(
            envelope(
                call(
                    {
                        "job_id": new_job_id(),
                        "enqueued_at": 0,
                        "items": [{"index": 0, "prompt": "p"}],
                    }
                )
            )
        ),
        "does not exist",
    ),
}


@pytest.mark.parametrize("name", list(RAW_MESSAGES))
def test_a_hostile_message_is_dead_lettered_and_the_workers_go_on(
    hostile: Client, name: str
) -> None:
    make, reason = RAW_MESSAGES[name]
    since = time.time()
    raw = make()
    push(hostile, raw)
    (letter,) = wait_for_dead(hostile, since, 1)
    assert reason in letter.reason, letter.reason
    assert "\n" not in letter.reason
    assert letter.worker_id
    assert letter.message  # the message is kept for a look
    run_real_job(hostile)
    assert_queue_drained(hostile)


def test_every_hostile_message_at_once_leaves_two_workers_serving(hostile: Client) -> None:
    since = time.time()
    push(hostile, *(make() for make, _ in RAW_MESSAGES.values()))
    hostile.celery.send_task("celery.backend_cleanup", queue=QUEUE)
    hostile.celery.send_task("some.other.task", args=[1], queue=QUEUE)
    wait_for_dead(hostile, since, len(RAW_MESSAGES) + 2)
    run_real_job(hostile, 40)
    assert_queue_drained(hostile)


def test_an_oversized_message_is_refused_unread(hostile: Client) -> None:
    since = time.time()
    push(hostile, "x" * (MAX_MESSAGE_BYTES + 1))
    (letter,) = wait_for_dead(hostile, since, 1)
    assert f"is {MAX_MESSAGE_BYTES + 1} bytes" in letter.reason
    assert letter.message_bytes == MAX_MESSAGE_BYTES + 1
    assert len(letter.message) < 10_000  # kept truncated
    run_real_job(hostile)


def rss_peak_mb(worker: WorkerProcess) -> float:
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_huge_prompt_that_skipped_the_producer_is_refused_before_it_is_tokenised(
    hostile: Client, hostile_workers: list[WorkerProcess]
) -> None:
    job_id = hostile.submit(["placeholder"], {"max_new_tokens": 2})
    hostile.wait(job_id, timeout_s=30)
    before = max(rss_peak_mb(w) for w in hostile_workers)
    since = time.time()
    chunk = {
        "job_id": job_id,
        "enqueued_at": 0,
        "items": [{"index": 0, "prompt": "w" * 20_000_000}],
    }
    push(hostile, json.dumps(envelope(call(chunk))))
    (letter,) = wait_for_dead(hostile, since, 1)
    assert "over this worker's limit" in letter.reason
    assert letter.job_id == job_id
    assert max(rss_peak_mb(w) for w in hostile_workers) - before < 1024
    run_real_job(hostile)


def forged_chunks(job_id: str) -> dict[str, tuple[dict[str, object], str]]:
    def chunk(*items: dict[str, object]) -> dict[str, object]:
        return {"job_id": job_id, "enqueued_at": time.time(), "items": list(items)}

    def item(index: object = 0, prompt: str = "p", **params: object) -> dict[str, object]:
        return {"index": index, "prompt": prompt, **({"params": params} if params else {})}

    return {
        "index-past-the-job": (chunk(item(0), item(31)), "is not one of job"),
        "negative-index": (chunk(item(-1)), "same genq version"),
        "index-a-string": (chunk(item("0")), "same genq version"),
        "index-twice": (chunk(item(0), item(0, "q")), "twice"),
        "bad-params": (chunk(item(temperature="hot")), "params"),
        "unknown-param": (chunk(item(evil=1)), "params"),
        "prompt-over-the-limit": (chunk(item(0, "x" * 70_000)), "over this worker's limit"),
        "empty-prompt": (chunk(item(0, "")), "same genq version"),
        "no-items": (chunk(), "same genq version"),
    }


def test_forged_chunks_for_a_running_job_never_touch_it(hostile: Client) -> None:
    # The job waits on a queue no worker serves, so that it is running while the forgeries
    # arrive; its own messages are then moved to the served queue.
    parked = Client(settings=hostile.settings.model_copy(update={"queue": "hostile-parked"}))
    job_id = parked.submit([f"genuine {i}" for i in range(8)], {"max_new_tokens": 3})
    forgeries = forged_chunks(job_id)
    since = time.time()
    push(hostile, *(json.dumps(envelope(call(c))) for c, _ in forgeries.values()))
    letters = wait_for_dead(hostile, since, len(forgeries))
    reasons = sorted(d.reason for d in letters)
    for name, (_, expected) in forgeries.items():
        assert any(expected in r for r in reasons), (name, reasons)
    assert all(d.job_id in (job_id, None) for d in letters)
    info = hostile.status(job_id)
    assert (info.status.value, info.done, info.error) == ("queued", 0, None)
    r = hostile.store.redis
    parked_keys = keyspace.celery_queue_lists("hostile-parked")
    live_keys = keyspace.celery_queue_lists(QUEUE)
    for parked_list, live_list in zip(parked_keys, live_keys, strict=True):
        while r.lmove(parked_list, live_list):
            pass
    info = hostile.wait(job_id, timeout_s=60)
    assert (info.status.value, info.completed, info.failed) == ("completed", 8, 0)
    assert r.hlen(keyspace.results(job_id)) == 8
    assert [x.prompt for x in hostile.iter_results(job_id)] == [f"genuine {i}" for i in range(8)]


def test_a_worker_whose_engine_loop_crashes_exits_non_zero(
    start_worker: StartWorker, settings: Settings
) -> None:
    queue = "crash-exit-test"
    client = Client(settings=settings.model_copy(update={"queue": queue}))
    worker = start_worker(queue=queue, engine="null", faults=json.dumps({"crash_on": ["CRASH"]}))
    client.submit(["CRASH now"], {"max_new_tokens": 2})
    worker.process.wait(60)
    assert worker.process.returncode == 1, worker.output()
    assert "the engine loop failed" in worker.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_someone_asked_for_still_exits_zero(start_worker: StartWorker, sig: int) -> None:
    worker = start_worker(queue="clean-exit-test", engine="null")
    worker.stop(sig)
    assert worker.process.returncode == 0, worker.output()
