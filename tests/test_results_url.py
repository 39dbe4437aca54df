"""A results store of its own (GENQ_RESULTS_URL): two real `redis-server` processes, a real
`null` worker and the `genq` command. Jobs, results and worker records live on the results
server; the Celery queue, kombu's leases, the fair feeder's pending lists and dead letters on
the broker's; tenants' policies on both (quotas are counted with the jobs, weights read by the
feeder's refill). Nothing on the broker's side reads a job's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, RedisProcess, WorkerProcess, free_port
from null_workers import start_null_worker

from genq import keyspace, leases
from genq.errors import BrokerUnavailableError, RedisUrlError
from genq.producer.client import Client
from genq.schema import Priority, TenantPolicy
from genq.settings import Settings

QUEUE = "split"
IDLE_QUEUE = "split-idle"  # no worker consumes it

# What each server may hold, by key prefix (after a job, a cancel, a dead letter, a policy).
RESULTS_SIDE: tuple[str, ...] = ("genq:job:", "genq:jobs", "genq:worker", "genq:tenant")
RESULTS_SIDE += ("genq:notice:", "genq:durable", "genq:idempotency:")
BROKER_SIDE = ("genq:celery:", "genq:sched:", "genq:tenant:", "genq:tenant-policies")


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    broker = RedisProcess(tmp_path_factory.mktemp("broker"))
    results = RedisProcess(tmp_path_factory.mktemp("results"))
    broker.start()
    results.start()
    yield broker, results
    broker.stop()
    results.stop()


@pytest.fixture(scope="module")
def worker(
    servers: tuple[RedisProcess, RedisProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    broker, results = servers
    process = start_null_worker(
        tmp_path_factory.mktemp("split-worker") / "worker.log",
        redis_url=broker.url,
        results_url=results.url,
        queue=QUEUE,
        max_batch_size="32",
        null_batch_ms="5",
    )
    yield process
    process.stop()


def client_for(servers: tuple[RedisProcess, RedisProcess], queue: str = QUEUE) -> Client:
    broker, results = servers
    settings = Settings(redis_url=broker.url, results_url=results.url, queue=queue, chunk_size=16)
    return Client(settings=settings)


def keys(server: RedisProcess) -> set[str]:
    with redis.Redis(port=server.port, decode_responses=True) as db:
        return set(db.scan_iter(count=1000))


def cli(
    servers: tuple[RedisProcess, RedisProcess], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    broker, results = servers
    full_env = {
        **os.environ,
        "GENQ_REDIS_URL": broker.url,
        "GENQ_RESULTS_URL": results.url,
        "GENQ_QUEUE": QUEUE,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "genq", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=60,
    )


def test_a_job_completes_with_its_keys_on_the_results_server_and_the_queue_on_the_brokers(
    servers: tuple[RedisProcess, RedisProcess], worker: WorkerProcess
) -> None:
    broker, results = servers
    client = client_for(servers)
    job_id = client.submit([f"prompt {i}" for i in range(400)], tenant="acme", priority="low")
    info = client.wait(job_id, timeout_s=60)
    assert (info.status.value, info.completed, info.failed) == ("completed", 400, 0)
    assert [r.index for r in client.iter_results(job_id)] == list(range(400))
    assert client.store.redis.hlen(keyspace.results(job_id)) == 400

    on_results, on_broker = keys(results), keys(broker)
    assert {keyspace.job(job_id), keyspace.results(job_id), keyspace.jobs_index()} <= on_results
    assert f"genq:worker:{client.workers()[0].id}" in on_results
    assert all(k.startswith(RESULTS_SIDE) for k in on_results), sorted(on_results)
    assert not any(k.startswith(("genq:celery:", "genq:sched:")) for k in on_results)
    assert all(k.startswith(BROKER_SIDE) for k in on_broker), sorted(on_broker)
    assert not any(k.startswith(("genq:job", "genq:worker")) for k in on_broker)
    # The job's messages went through the broker's pending list and queue, all acknowledged.
    with redis.Redis(port=broker.port, decode_responses=True) as db:
        deadline = time.monotonic() + 10  # the last ack follows the job's end on the worker
        while db.zcard(leases.unacked_index_key()) != 0:
            assert time.monotonic() < deadline, "messages still held after the job ended"
            time.sleep(0.1)
        assert db.llen(keyspace.sched_pending(QUEUE, job_id)) == 0
        # One staging (up to 64 messages), numbered on the broker, not in the job's record.
        assert db.get(f"{keyspace.sched_prefix(QUEUE)}staged:{job_id}") == "1"
    assert "staged" not in client.store.redis.hgetall(keyspace.job(job_id))


def test_cancel_drops_the_pending_messages_and_refuses_later_stagings(
    servers: tuple[RedisProcess, RedisProcess],
) -> None:
    broker, _ = servers
    client = client_for(servers, IDLE_QUEUE)  # no worker: the messages stay pending
    job_id = client.submit([f"prompt {i}" for i in range(800)])  # 50 messages, 4 queued
    view = client.queue()
    assert view.pending_items(job_id) == 800 - 4 * 16
    assert view.ready_messages == 4
    info = client.cancel(job_id)
    assert info.status.value == "cancelled"
    assert client.queue().pending_items(job_id) == 0
    with redis.Redis(port=broker.port, decode_responses=True) as db:
        assert not db.exists(keyspace.sched_pending(IDLE_QUEUE, job_id))
        assert db.exists(f"{keyspace.sched_prefix(IDLE_QUEUE)}dropped:{job_id}")
    # A producer still sending the job (its staging after the cancel) stages nothing.
    staged = client.feeder.stage(job_id, Priority.NORMAL, "default", 99, [(1, "{}")])
    assert staged is False
    assert client.queue().pending_items(job_id) == 0


def test_a_refused_message_is_dead_lettered_on_the_broker(
    servers: tuple[RedisProcess, RedisProcess], worker: WorkerProcess
) -> None:
    broker, results = servers
    client = client_for(servers)
    before = client.dead_letter_count()
    with redis.Redis(port=broker.port) as db:
        db.lpush(keyspace.celery_queue(QUEUE), b"not json")
    deadline = time.monotonic() + 30
    while client.dead_letter_count() == before:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.1)
    assert "not JSON" in client.dead_letters(0, 1)[0].reason
    assert keyspace.celery_dead() in keys(broker)
    assert keyspace.celery_dead() not in keys(results)


def test_the_cli_works_across_both_servers(
    servers: tuple[RedisProcess, RedisProcess], worker: WorkerProcess, tmp_path: Path
) -> None:
    broker, results = servers
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"line {i}\n" for i in range(40)))
    submitted = cli(servers, "submit", str(prompts), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    status = cli(servers, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["completed"] == 40
    workers = cli(servers, "workers", "--json")
    assert workers.returncode == 0, workers.stderr
    assert [json.loads(line)["queue"] for line in workers.stdout.splitlines()] == [QUEUE]
    queued = cli(servers, "queue", "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["queue"] == QUEUE

    tenant = cli(servers, "tenants", "set", "acme", "--weight", "3", "--max-jobs-in-progress", "5")
    assert tenant.returncode == 0, tenant.stderr
    for server in (broker, results):  # quotas with the jobs, weights with the feeder
        with redis.Redis(port=server.port, decode_responses=True) as db:
            policy = db.hgetall(keyspace.tenant_policy("acme"))
            assert policy == {"weight": "3.0", "max_jobs_in_progress": "5"}
    listed = cli(servers, "tenants", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "acme" in listed.stdout
    assert client_for(servers).tenant_policies()["acme"] == TenantPolicy(
        weight=3, max_jobs_in_progress=5
    )
    removed = cli(servers, "tenants", "remove", "acme")
    assert removed.returncode == 0, removed.stderr
    for server in (broker, results):
        with redis.Redis(port=server.port, decode_responses=True) as db:
            assert not db.exists(keyspace.tenant_policy("acme"))


def test_errors_name_the_variable_of_the_server_that_failed(
    servers: tuple[RedisProcess, RedisProcess],
) -> None:
    broker, results = servers
    dead = f"redis://:pw@127.0.0.1:{free_port()}/0"
    away = Client(settings=Settings(redis_url=broker.url, results_url=dead))
    with pytest.raises(BrokerUnavailableError) as results_error:
        away.jobs()
    assert "GENQ_RESULTS_URL" in str(results_error.value)
    assert "pw" not in str(results_error.value)
    with pytest.raises(BrokerUnavailableError) as broker_error:
        Client(settings=Settings(redis_url=dead, results_url=results.url)).queue()
    assert "GENQ_REDIS_URL" in str(broker_error.value)
    with pytest.raises(RedisUrlError) as url_error:
        Client(settings=Settings(redis_url=broker.url, results_url="redis://h:1/x"))
    assert "GENQ_RESULTS_URL" in str(url_error.value)
    shown = cli(servers, "status", "0" * 32, env={"GENQ_RESULTS_URL": dead})
    assert shown.returncode != 0
    assert "GENQ_RESULTS_URL" in shown.stderr
    assert ":pw@" not in shown.stderr
