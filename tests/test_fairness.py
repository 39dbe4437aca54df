"""Fair scheduling on real workers: two `null`-engine workers with a fixed cost per batch (as
GPU-bound workers behave), one Redis, jobs of several sizes, priorities and tenants.

What is asserted is the policy of docs/scheduling.md: a small job does not wait for a big one,
`high` jumps `normal`, tenants share by weight, `low` is never starved, and a worker killed in
the middle of it all loses and duplicates nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from conftest import StartWorker, WorkerProcess

from genq import keyspace
from genq.producer.client import Client
from genq.schema import TenantPolicy
from genq.settings import Settings

QUEUE = "fairness"
BATCH_MS = 40  # what each batch of up to 32 costs the workers
LEASE_S = 6


def _workers(start_worker: StartWorker, count: int, **env: str) -> list[WorkerProcess]:
    return [
        start_worker(
            engine="null",
            queue=QUEUE,
            null_batch_ms=str(BATCH_MS),
            max_batch_size="32",
            lease_s=str(LEASE_S),
            **env,
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def two_workers(start_worker: StartWorker) -> list[WorkerProcess]:
    return _workers(start_worker, 2)


@pytest.fixture
def client(settings: Settings, two_workers: list[WorkerProcess]) -> Iterator[Client]:
    # Messages cut as by default: the 20,000-prompt jobs' are 32 prompts, the others' 16.
    fair = Client(settings=settings.model_copy(update={"queue": QUEUE, "chunk_size": None}))
    yield fair
    for info in fair.jobs(limit=50):  # leave the workers idle for the next test
        if not info.is_terminal:
            fair.cancel(info.id)
    for name in fair.tenant_policies():
        fair.set_tenant_policy(name, None)


def prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


def wait_for(client: Client, job_id: str, done: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.status(job_id).done < done:
        assert time.monotonic() < deadline, f"job {job_id} did not reach {done} items"
        time.sleep(0.02)


def timed(client: Client, job_id: str, submitted_at: float) -> float:
    client.wait(job_id, timeout_s=60, poll_interval_s=0.01)
    return time.monotonic() - submitted_at


@pytest.mark.parametrize("priority", ["normal", "high"])
def test_a_small_job_behind_a_large_one_finishes_while_it_advances_less_than_5_percent(
    client: Client, priority: str
) -> None:
    started = time.monotonic()
    alone_s = timed(client, client.submit(prompts(20, "alone"), priority=priority), started)
    large = client.submit(prompts(20_000, "large"))
    wait_for(client, large, 1_000)
    before = client.status(large).done
    started = time.monotonic()
    behind_s = timed(client, client.submit(prompts(20, "small"), priority=priority), started)
    advanced = client.status(large).done - before
    assert advanced < 1_000, f"the large job advanced {advanced} items meanwhile"
    # Alone it takes a batch or two plus the queue path; behind the large job, at most the
    # batches already in flight more.
    assert behind_s < max(3 * alone_s, 0.5), (alone_s, behind_s)


def test_tenants_share_the_workers_3_to_1_by_weight(client: Client) -> None:
    client.set_tenant_policy("gold", TenantPolicy(weight=3))
    gold = client.submit(prompts(8_000, "gold"), tenant="gold")
    bronze = client.submit(prompts(8_000, "bronze"), tenant="bronze")
    wait_for(client, gold, 500)
    first = client.status(gold).done, client.status(bronze).done
    time.sleep(3)  # both still backlogged: gold alone would need ~6 s at full speed
    last = client.status(gold).done, client.status(bronze).done
    gold_share = (last[0] - first[0]) / ((last[0] - first[0]) + (last[1] - first[1]))
    assert client.status(gold).pending > 0
    assert 0.65 <= gold_share <= 0.85, gold_share


def test_low_priority_progresses_under_sustained_normal_load(client: Client) -> None:
    normal = [client.submit(prompts(6_000, f"normal{n}")) for n in range(2)]
    low = client.submit(prompts(2_000, "low"), priority="low")
    wait_for(client, normal[0], 500)
    time.sleep(3)
    assert all(client.status(j).pending > 0 for j in normal)  # normal work never ran out
    low_done = client.status(low).done
    normal_done = sum(client.status(j).done for j in normal)
    # The rule: a waiting level gets at least 1 message in 10 (GENQ_STARVE_AFTER_MESSAGES=9).
    assert low_done >= 0.05 * (low_done + normal_done), (low_done, normal_done)


def test_a_worker_sigkilled_during_a_fair_share_run_loses_and_duplicates_nothing(
    client: Client, start_worker: StartWorker
) -> None:
    client.set_tenant_policy("gold", TenantPolicy(weight=2))
    doomed = _workers(start_worker, 1)[0]
    jobs = {
        client.submit(prompts(3_000, "a"), tenant="gold"): 3_000,
        client.submit(prompts(2_000, "b"), tenant="bronze", priority="low"): 2_000,
        client.submit(prompts(500, "c"), priority="high"): 500,
        client.submit(prompts(1_500, "d"), tenant="gold", priority="normal"): 1_500,
    }
    first = next(iter(jobs))
    wait_for(client, first, 300)
    doomed.stop(signal.SIGKILL)
    for job_id, total in jobs.items():
        info = client.wait(job_id, timeout_s=120)
        assert (info.status.value, info.completed, info.failed) == ("completed", total, 0)
        assert [r.index for r in client.iter_results(job_id)] == list(range(total))
        assert client.store.redis.hlen(keyspace.results(job_id)) == total
    assert client.queue().jobs == []


def test_a_quota_refusal_enqueues_nothing_and_the_cli_says_so(
    client: Client, genq_cli: object
) -> None:
    client.set_tenant_policy("acme", TenantPolicy(max_jobs_in_progress=1))
    client.submit(prompts(20_000, "first"), tenant="acme")
    env = {"GENQ_QUEUE": QUEUE}
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    refused = genq_cli("submit", "-", "--tenant", "acme", input="one\ntwo\n", env=env)  # type: ignore[operator]
    assert refused.returncode == 75, refused.stderr
    assert "max_jobs_in_progress=1" in refused.stderr
    assert refused.stderr.count("\n") == 1  # one clear line
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before
    other = genq_cli("submit", "-", "--tenant", "other", input="one\n", env=env)  # type: ignore[operator]
    assert other.returncode == 0, other.stderr
