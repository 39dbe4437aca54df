"""``genq top`` on real parts: two ``null``-engine workers with a fixed cost per batch (as
GPU-bound workers behave), a GPT-2 worker for tokens, jobs running on one Redis, and the
``genq`` command as a subprocess (stdout a pipe: ``--once`` prints plain frames there)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisProcess, StartWorker, WorkerProcess

from genq import keyspace
from genq.producer.client import Client
from genq.producer.enqueueing import new_job_id
from genq.registry import BatchStats
from genq.schema import WorkerInfo
from genq.settings import DEFAULT_HEARTBEAT_S, Settings

Cli = Callable[..., subprocess.CompletedProcess[str]]

QUEUE = "top"
BATCH_MS = 40
ON_QUEUE = {"GENQ_QUEUE": QUEUE}


@pytest.fixture(scope="module")
def null_workers(start_worker: StartWorker) -> list[WorkerProcess]:
    return [
        start_worker(engine="null", queue=QUEUE, null_batch_ms=str(BATCH_MS), max_batch_size="32")
        for _ in range(2)
    ]


@pytest.fixture
def top_client(settings: Settings, null_workers: list[WorkerProcess]) -> Iterator[Client]:
    client = Client(settings=settings.model_copy(update={"queue": QUEUE, "chunk_size": 16}))
    yield client
    for info in client.jobs(limit=50):  # leave the workers idle for the next test
        if not info.is_terminal:
            client.cancel(info.id)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A server of its own: no workers, no jobs."""
    server = RedisProcess(tmp_path / "own")
    server.start()
    yield server
    server.stop()


def running_jobs(client: Client) -> tuple[str, str]:
    """A large normal job (about 12 s on the two workers) and a low one behind it, both
    under way."""
    normal = client.submit([f"normal {i}" for i in range(20_000)])
    low = client.submit([f"low {i}" for i in range(4_000)], priority="low")
    deadline = time.monotonic() + 60
    while client.status(normal).done < 500 or client.status(low).done == 0:
        assert time.monotonic() < deadline, "the jobs did not start"
        time.sleep(0.05)
    return normal, low


def top_json(genq_cli: Cli, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    shown = genq_cli("top", "--once", "--json", *args, env=env)
    assert shown.returncode == 0, shown.stderr
    frame: dict[str, Any] = json.loads(shown.stdout)
    return frame


def test_once_shows_workers_waiting_work_and_job_progress(
    genq_cli: Cli, top_client: Client
) -> None:
    normal, low = running_jobs(top_client)
    ids = {w.id for w in top_client.queue_workers()}
    assert len(ids) == 2
    shown = genq_cli("top", "--once", "--interval", "0.5", env=ON_QUEUE)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert f"queue '{QUEUE}'" in lines[0]
    for worker_id in ids:
        (row,) = [line for line in lines if line.startswith(worker_id)]
        assert "null/cpu" in row
        assert re.search(r"\s[\d.]+/32\s", row), row  # mean batch / max_batch_size
        util = int(re.findall(r"\s(\d+)%\s", row)[0])
        assert 0 < util <= 100, row
    waiting = {line.split()[0]: line.split()[1:] for line in lines if re.match(r"\w+\s+\d", line)}
    assert int(waiting["normal"][1]) > 0  # jobs, then items waiting
    assert int(waiting["low"][1]) > 0
    assert waiting["high"] == ["0", "0"]
    assert re.search(r"\d+ message\(s\) ready for workers", shown.stdout)
    for job_id, priority in ((normal, "normal"), (low, "low")):
        (row,) = [line for line in lines if line.startswith(job_id)]
        assert f"running  {priority}" in row.replace("   ", "  "), row
        done, total, percent = map(int, re.findall(r"\s(\d+)/(\d+) (\d+)%\s", row)[0])
        assert 0 < done < total, row
        assert percent == done * 100 // total
        assert re.search("[━╸]", row), row  # the progress bar


def test_once_json_numbers_are_consistent(genq_cli: Cli, top_client: Client) -> None:
    normal, low = running_jobs(top_client)
    frame = top_json(genq_cli, "--interval", "1", env=ON_QUEUE)
    assert frame["queue"] == QUEUE
    assert 0.9 < frame["interval_s"] < 3
    ours = [w for w in frame["workers"] if w["queue"] == QUEUE]
    assert len(ours) == 2
    for w in ours:
        assert (w["engine"], w["device"], w["max_batch_size"]) == ("null", "cpu", 32)
        assert 0 < w["utilisation"] <= 1
        assert w["items_per_s"] > 0
        assert w["tokens_per_s"] == 0  # the null engine generates no tokens
        assert 1 <= w["recent_mean_batch"] <= 32
        assert w["busy_s"] > 0
        assert w["heartbeat_age_s"] < 3
        assert not w["stale"]
    jobs = {j["id"]: j for j in frame["jobs"]}
    assert {normal, low} <= set(jobs)
    for job_id in (normal, low):
        job = jobs[job_id]
        assert job["status"] == "running"
        assert 0 < job["done"] <= job["total"]
        assert job["done"] == job["completed"] + job["failed"]
        assert job["items_per_s"] > 0
        assert job["eta_s"] == pytest.approx((job["total"] - job["done"]) / job["items_per_s"])
    # Both read over the same two samples: what the workers did is what the jobs gained.
    by_workers = sum(w["items_per_s"] for w in ours)
    by_jobs = jobs[normal]["items_per_s"] + jobs[low]["items_per_s"]
    assert by_jobs == pytest.approx(by_workers, rel=0.3)
    # Two 40 ms workers, batches of up to 32: at most ~1,600 items/s, plus one batch per worker
    # that a counter's step of 32 can add to a sampling window.
    assert 200 < by_workers < 1.25 * 2 * 32 * 1000 / BATCH_MS
    levels = {p["priority"]: p for p in frame["waiting"]["priorities"]}
    assert list(levels) == ["high", "normal", "low"]
    assert levels["normal"]["jobs"] == levels["low"]["jobs"] == 1
    assert levels["normal"]["items"] > levels["low"]["items"] > 0
    assert levels["high"] == {"priority": "high", "jobs": 0, "items": 0}


def test_a_gpt2_worker_shows_tokens_per_second(
    genq_cli: Cli, client: Client, worker: WorkerProcess
) -> None:
    # Long enough (~20 s here) to outlast `genq top`'s start and its sampling window anywhere.
    job_id = client.submit([f"tell me {i}" for i in range(5000)], {"max_new_tokens": 16})
    try:
        deadline = time.monotonic() + 60
        while client.status(job_id).done == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A window of several batches: a loaded machine can stall a worker for a second.
        frame = top_json(genq_cli, "--interval", "3")
        (w,) = [w for w in frame["workers"] if w["queue"] == "generate" and w["engine"] == "hf"]
        assert w["tokens_per_s"] > 0, frame
        assert 0 < w["utilisation"] <= 1
    finally:
        client.cancel(job_id)


def test_an_empty_redis_is_a_clear_empty_frame(genq_cli: Cli, own_redis: RedisProcess) -> None:
    env = {"GENQ_REDIS_URL": own_redis.url}
    shown = genq_cli("top", "--once", "--interval", "0.1", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "0 worker(s): 0 tok/s, 0 items/s" in shown.stdout
    assert "no live workers (start one: genq worker)" in shown.stdout
    assert "0 message(s) ready for workers; nothing else waiting" in shown.stdout
    assert "no queued or running jobs" in shown.stdout
    frame = top_json(genq_cli, "--interval", "0.1", env=env)
    assert frame["workers"] == frame["jobs"] == []
    assert frame["waiting"]["ready_messages"] == 0
    assert all(p["jobs"] == p["items"] == 0 for p in frame["waiting"]["priorities"])


def test_a_worker_whose_heartbeat_is_old_is_shown_stale(
    genq_cli: Cli, own_redis: RedisProcess
) -> None:
    store = Client(own_redis.url).store
    now = datetime.now(timezone.utc)
    info = WorkerInfo(
        id=f"w-{new_job_id()}", hostname="h", pid=1, engine="null", model="none", device="cpu",
        max_batch_size=4, started_at=now, last_seen=now,
    )  # fmt: skip
    store.register_worker(info, DEFAULT_HEARTBEAT_S)
    store.redis.hdel(keyspace.worker(info.id), "busy_s")  # a record from before busy_s
    beat = time.time() - 2.5 * DEFAULT_HEARTBEAT_S  # past 2 beats: stale; at 3: gone
    store.redis.hset(keyspace.worker(info.id), "last_seen", repr(beat))
    store.redis.zadd(keyspace.workers_index(), {info.id: beat})
    env = {"GENQ_REDIS_URL": own_redis.url}
    frame = top_json(genq_cli, "--interval", "0.1", env=env)
    (shown,) = frame["workers"]
    assert shown["stale"]
    assert shown["heartbeat_age_s"] > 2 * DEFAULT_HEARTBEAT_S
    assert (shown["busy_s"], shown["utilisation"], shown["mean_batch"]) == (0, 0, None)
    text = genq_cli("top", "--once", "--interval", "0.1", env=env).stdout
    (row,) = [line for line in text.splitlines() if line.startswith(info.id)]
    assert re.search(r"1\ds stale", row), row


def test_batches_add_their_busy_time_to_the_worker_record(client: Client) -> None:
    store = client.store
    now = datetime.now(timezone.utc)
    info = WorkerInfo(
        id=f"w-{new_job_id()}", hostname="h", pid=1, engine="null", model="none", device="cpu",
        max_batch_size=4, started_at=now, last_seen=now,
    )  # fmt: skip
    store.register_worker(info, 1.0)
    store.record({}, BatchStats(info.id, sequences=4, items=4, tokens=40, busy_s=0.25))
    store.record({}, BatchStats(info.id, sequences=2, items=2, tokens=20, busy_s=0.5))
    store.record({}, BatchStats(info.id, sequences=1, items=1, tokens=1))  # no time given
    store.register_worker(info, 1.0)  # a re-registration keeps the counters
    (listed,) = [w for w in store.workers(1.0) if w.id == info.id]
    assert listed.busy_s == pytest.approx(0.75)
    assert (listed.batches, listed.items, listed.tokens) == (3, 7, 61)
    store.remove_worker(info.id)


def test_bad_redis_and_bad_options_are_one_error_line(genq_cli: Cli) -> None:
    for url, status in (("redis://user:s3cret@127.0.0.1:1/0", 1), ("http://nowhere", 2)):
        shown = genq_cli("top", "--once", env={"GENQ_REDIS_URL": url})
        assert shown.returncode == status, shown.stderr
        assert shown.stdout == ""
        assert "Traceback" not in shown.stderr
        assert "s3cret" not in shown.stderr
        (line,) = shown.stderr.strip().splitlines()
        assert line.startswith("error: cannot reach Redis" if status == 1 else "error: invalid")
    for args in (["--json"], ["--once", "--interval", "0"]):
        refused = genq_cli("top", *args)
        assert refused.returncode == 2
        assert refused.stderr.startswith("error: ")
    piped = genq_cli("top")  # the live view on a pipe
    assert piped.returncode == 2
    assert "on a pipe use --once" in piped.stderr
