"""Recovery on real processes and real signals: leases, dead workers, poison items.

Every test asserts that each item of the job ends exactly once, with the right counters.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import RedisProcess, StartWorker, WorkerProcess

from genq import keyspace
from genq.errors import BrokerUnavailableError, WaitTimeoutError
from genq.producer.client import Client
from genq.schema import JobInfo
from genq.settings import LEASE_SWEEP_S, Settings

LEASE_S = 6  # short leases keep these tests quick; the default is 30 s


def on_queue(settings: Settings, queue: str) -> Client:
    return Client(settings=settings.model_copy(update={"queue": queue}))


def slow_worker(start_worker: StartWorker, queue: str) -> WorkerProcess:
    """A worker on short leases whose every decode step takes 0.5 s longer."""
    return start_worker(queue=queue, lease_s=str(LEASE_S), faults=json.dumps({"delay_s": 0.5}))


def worker_id(worker: WorkerProcess) -> str:
    line = next(line for line in worker.output().splitlines() if "ready: engine=" in line)
    return line.split("genq worker ", 1)[1].split(" ", 1)[0]


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_each_item_once(client: Client, job_id: str, info: JobInfo, total: int) -> None:
    assert (info.status.value, info.completed, info.failed) == ("completed", total, 0)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(total))
    assert client.store.redis.hlen(keyspace.results(job_id)) == total


def test_a_sigkilled_workers_messages_are_taken_up_when_its_lease_expires(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "sigkill-test")
    # A slow worker that takes the whole job (4 messages of 4) and is killed mid-batch.
    doomed = slow_worker(start_worker, "sigkill-test")
    job_id = client.submit([f"prompt {i} about tea" for i in range(16)], {"max_new_tokens": 24})
    wait_until(lambda: client.status(job_id).status.value == "running", 30, "the job to start")
    time.sleep(1)
    doomed.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    assert client.status(job_id).done == 0  # killed mid-batch: no result written yet
    rescuer = start_worker(queue="sigkill-test", lease_s=str(LEASE_S))
    info = client.wait(job_id, timeout_s=60)
    recovered_in_s = time.monotonic() - killed_at
    assert_each_item_once(client, job_id, info, 16)
    assert {r.worker_id for r in client.iter_results(job_id)} == {worker_id(rescuer)}
    # Taken up once the lease expired (not at once, not after kombu's hour): lease + a
    # heartbeat + a sweep, plus the generation itself.
    assert LEASE_S - 2 < recovered_in_s < LEASE_S + 1 + LEASE_SWEEP_S + 15


def test_a_batch_longer_than_the_lease_runs_once_on_a_healthy_worker(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "long-batch-test")
    slow = slow_worker(start_worker, "long-batch-test")
    started = time.monotonic()
    job_id = client.submit([f"prompt {i}" for i in range(8)], {"max_new_tokens": 30})
    wait_until(lambda: client.status(job_id).status.value == "running", 30, "the job to start")
    idle = start_worker(queue="long-batch-test", lease_s=str(LEASE_S))  # would steal on expiry
    info = client.wait(job_id, timeout_s=90)
    assert time.monotonic() - started > 2 * LEASE_S  # the batch outlived two leases
    assert_each_item_once(client, job_id, info, 8)
    assert {r.worker_id for r in client.iter_results(job_id)} == {worker_id(slow)}
    assert "lease lost" not in slow.output()
    counters = {w.id: w.items for w in client.workers()}
    assert counters[worker_id(idle)] == 0  # the other worker never ran any of it


def test_injected_exceptions_and_out_of_memory_stay_per_item(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "faults-test")
    plan = {"raise_on": ["POISON"], "oom_on": ["BIG"], "oom_above_rows": 1}
    start_worker(
        queue="faults-test",
        faults=json.dumps(plan),
        retry_backoff_s="0.2",
        max_batch_size="8",
        max_wait_ms="500",
    )
    prompts = [f"prompt {i}" for i in range(24)]
    prompts[3] = "POISON pill"
    prompts[17] = "a BIG one"
    job_id = client.submit(prompts, {"max_new_tokens": 6})
    info = client.wait(job_id, timeout_s=90)
    assert (info.status.value, info.completed, info.failed) == ("completed", 23, 1)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(24))
    failed = [r for r in results if not r.ok]
    assert [r.index for r in failed] == [3]
    assert failed[0].error is not None
    assert failed[0].error.type == "generation_error"
    assert "(after 3 attempts)" in failed[0].error.message
    assert results[17].ok  # out of memory in a batch: halved until it ran alone, then fine


def test_redis_killed_and_restarted_with_aof_loses_no_job(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    server = RedisProcess(tmp_path / "redis-aof", appendonly=True)
    server.start()
    try:
        client = Client(settings=Settings(redis_url=server.url, chunk_size=4))
        worker = start_worker(
            redis_url=server.url, lease_s=str(LEASE_S), faults=json.dumps({"delay_s": 0.05})
        )
        job_id = client.submit([f"prompt {i} on soup" for i in range(60)], {"max_new_tokens": 16})
        wait_until(lambda: client.status(job_id).done >= 8, 60, "some results")
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.wait, job_id, 120)  # a producer waiting throughout
            server.stop()  # SIGKILL: no chance to save anything beyond the append-only file
            with pytest.raises(BrokerUnavailableError):
                client.submit(["during the outage"])  # never reported as submitted
            time.sleep(2)
            server.start()
            info = waiting.result()
        assert_each_item_once(client, job_id, info, 60)
        # The worker reconnected by itself and keeps consuming new work.
        after = client.submit(["after the restart"], {"max_new_tokens": 2})
        try:
            assert client.wait(after, timeout_s=60).completed == 1
        except WaitTimeoutError:
            raise AssertionError(f"no longer consuming:\n{worker.output()[-6000:]}") from None
        assert len(client.jobs()) == 2  # the refused submit left no job behind
        assert worker.process.poll() is None, worker.output()
    finally:
        server.stop()


def test_at_its_deadline_a_job_expires_and_its_unstarted_items_end_as_expired(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "expiry-test")
    start_worker(queue="expiry-test", max_batch_size="4", faults=json.dumps({"delay_s": 0.05}))
    job_id = client.submit(
        [f"prompt {i}" for i in range(80)], {"max_new_tokens": 16}, expires_in_s=4
    )
    info = client.wait(job_id, timeout_s=60)
    assert info.status.value == "expired"
    # Workers drain the rest of its messages without the model: every item ends, once.
    wait_until(lambda: client.status(job_id).done == 80, 60, "every item to end")
    info = client.status(job_id)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(80))
    expired = [r for r in results if r.error is not None and r.error.type == "expired"]
    assert 0 < len(expired) < 80  # some items were generated in time, the rest expired
    assert (info.completed, info.failed) == (80 - len(expired), len(expired))
    assert all(r.outputs for r in results if r.ok)  # finished results are kept


def test_a_job_submitted_twice_at_once_with_one_idempotency_key_runs_once(
    worker: WorkerProcess, client: Client
) -> None:
    key = f"nightly-{time.time_ns()}"
    prompts = [f"prompt {i}" for i in range(12)]
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    with ThreadPoolExecutor(2) as pool:
        ids = list(
            pool.map(
                lambda _: Client(settings=client.settings).submit(
                    prompts, {"max_new_tokens": 4}, idempotency_key=key
                ),
                range(2),
            )
        )
    assert ids[0] == ids[1]
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before + 1
    info = client.wait(ids[0], timeout_s=60)
    assert_each_item_once(client, ids[0], info, 12)


def test_an_item_that_kills_its_worker_every_time_ends_as_worker_lost(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "poison-crash-test")
    env = {
        "queue": "poison-crash-test",
        "lease_s": str(LEASE_S),
        "max_attempts": "2",
        "faults": json.dumps({"die_on": ["CRASH"]}),
    }
    workers = [start_worker(**env)]
    prompts = [f"prompt {i}" for i in range(6)]
    prompts[2] = "CRASH here"
    job_id = client.submit(prompts, {"max_new_tokens": 4})
    deadline = time.monotonic() + 150
    while not client.status(job_id).is_terminal:
        assert time.monotonic() < deadline, "the job did not end"
        if workers[-1].process.poll() is not None:  # a supervisor restarts dead workers
            workers.append(start_worker(**env))
        time.sleep(0.2)
    info = client.status(job_id)
    assert (info.status.value, info.completed, info.failed) == ("completed", 5, 1)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(6))
    (lost,) = [r for r in results if not r.ok]
    assert lost.index == 2
    assert lost.error is not None
    assert lost.error.type == "worker_lost"
    # Died in a batch with its neighbours, then alone; the third time it was not run.
    assert [w.process.returncode for w in workers[:2]] == [-signal.SIGKILL] * 2
    assert len(workers) == 3


def test_sigterm_lets_rows_longer_than_the_lease_finish_without_handing_them_over(
    start_worker: StartWorker, settings: Settings
) -> None:
    client = on_queue(settings, "sigterm-lease-test")
    slow = slow_worker(start_worker, "sigterm-lease-test")
    job_id = client.submit([f"prompt {i}" for i in range(4)], {"max_new_tokens": 50})
    started = lambda: client.store.redis.hlen(keyspace.attempts(job_id)) == 4  # noqa: E731
    wait_until(started, 30, "the rows to be in flight")
    idle = start_worker(queue="sigterm-lease-test", lease_s=str(LEASE_S))
    slow.process.send_signal(signal.SIGTERM)  # 15-20 s of rows left: more than two leases
    assert slow.process.wait(90) == 0
    info = client.wait(job_id, timeout_s=30)
    assert_each_item_once(client, job_id, info, 4)
    writers = {r.worker_id for r in client.iter_results(job_id)}
    assert writers == {worker_id(slow)}, f"{writers}\n{slow.output()[-5000:]}"
    assert {w.id: w.items for w in client.workers()}[worker_id(idle)] == 0
