"""Job state in a real Redis: first write wins, counters, completion, TTLs, pages, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
from conftest import RedisProcess, valkey_binary

from genq import keyspace, leases
from genq.connection import connect
from genq.errors import IdempotencyConflictError, JobNotFoundError
from genq.producer.client import Client
from genq.producer.enqueueing import new_job_id
from genq.registry import BatchStats
from genq.schema import ErrorInfo, ItemResult, JobItem, JobSpec, JobStatus, WorkerInfo
from genq.settings import Settings
from genq.submissions import NewJob, SubmissionStore
from genq.worker.work_store import WorkStore

TTL_S = 1234


class Store(SubmissionStore, WorkStore):
    """Both sides' calls on one object: these tests submit, then admit, on one Redis."""


@pytest.fixture
def store(settings: Settings) -> Store:
    return Store(connect(settings.redis_url), TTL_S)


def make_job(store: Store, n: int) -> str:
    job_id = new_job_id()
    store.create_job(job_id, NewJob.of(JobSpec(items=[JobItem(prompt=f"p{i}") for i in range(n)])))
    return job_id


def result(index: int, text: str = "out", error: bool = False) -> ItemResult:
    return ItemResult(
        custom_id=str(index),
        index=index,
        prompt=f"p{index}",
        outputs=[] if error else [text],
        error=ErrorInfo(type="generation_error", message="boom") if error else None,
    )


def test_new_job_is_queued_with_zero_counters(store: Store) -> None:
    info = store.get(make_job(store, 3))
    assert (info.status, info.total, info.completed, info.failed) == (JobStatus.QUEUED, 3, 0, 0)
    assert info.finished_at is None


def test_first_result_wins_and_counters_move_once(store: Store) -> None:
    job_id = make_job(store, 3)
    assert store.record({job_id: [result(0, "first")]}) == {job_id: 1}
    assert store.record({job_id: [result(0, "second")]}) == {job_id: 0}
    info = store.get(job_id)
    assert (info.status, info.completed) == (JobStatus.RUNNING, 1)
    assert store.results(job_id)[0].outputs == ["first"]


def test_results_of_one_write_each_land_whole_whatever_their_text_holds(store: Store) -> None:
    # Each result of the write comes back whole and unchanged, counted once, whatever its text:
    # the JSON escapes newlines and quotes, but commas, line separators (U+2028, U+2029, NEL)
    # and non-ASCII reach the script raw, so its format must never split results by them.
    texts = ["a\nb\n\n", "x,y,,", '{"index": 1}', "\u2028\u2029\r\n\x85", "é\\n", ""]
    job_id = make_job(store, len(texts) + 1)
    written = [result(i, text) for i, text in enumerate(texts)]
    written[2] = written[2].model_copy(update={"prompt": "p\n,2"})
    written.append(result(len(texts), error=True))
    assert store.record({job_id: written}) == {job_id: len(written)}
    assert store.results(job_id) == written
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, len(texts), 1)


def test_job_completes_when_its_last_item_lands_even_with_failures(store: Store) -> None:
    job_id = make_job(store, 2)
    store.record({job_id: [result(1, error=True)]})
    store.record({job_id: [result(0)]})
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 1, 1)
    assert info.finished_at is not None
    for key in (keyspace.job(job_id), keyspace.results(job_id)):
        assert 0 < store.redis.ttl(key) <= TTL_S


def test_a_late_result_of_an_ended_job_keeps_the_records_lifetime(store: Store) -> None:
    job_id = make_job(store, 2)
    store.record({job_id: [result(0)]})
    store.cancel(job_id)
    store.redis.expire(keyspace.job(job_id), 50_000)  # lengthened (an API batch's files)
    assert store.record({job_id: [result(1)]}) == {job_id: 1}  # a row that was in flight
    assert store.redis.ttl(keyspace.job(job_id)) > 49_000
    assert 49_000 < store.redis.ttl(keyspace.results(job_id)) <= 50_000


def test_a_job_with_a_webhook_and_a_deadline_is_swept_on_time(store: Store) -> None:
    job_id = new_job_id()
    spec = JobSpec(items=[JobItem(prompt="p")], expires_in_s=0.05)
    store.create_job(job_id, NewJob.of(spec, {"notify": "1"}))
    plain = make_job(store, 1)
    time.sleep(0.1)
    assert store.expire_due() == 1
    assert store.redis.hget(keyspace.job(job_id), "status") == "expired"
    assert store.redis.zscore(keyspace.webhook_outbox(), job_id) is not None
    assert store.redis.zscore(keyspace.deadlines(), job_id) is None
    assert store.redis.zscore(keyspace.deadlines(), plain) is None
    assert store.expire_due() == 0


def test_unfinished_job_expires_only_after_the_long_unfinished_ttl(store: Store) -> None:
    job_id = make_job(store, 2)
    store.record({job_id: [result(0)]})
    job_ttl = store.redis.ttl(keyspace.job(job_id))
    assert job_ttl > TTL_S
    assert 0 < store.redis.ttl(keyspace.results(job_id)) <= job_ttl


def test_results_come_in_input_order_page_by_page(store: Store) -> None:
    job_id = make_job(store, 10)
    store.record({job_id: [result(i) for i in (7, 2, 9, 0, 5)]})
    assert [r.index for r in store.results(job_id, 0, 100)] == [0, 2, 5, 7, 9]
    assert [r.index for r in store.results(job_id, 3, 4)] == [5]


def test_cancel_ends_the_job_and_keeps_finished_results(store: Store) -> None:
    job_id = make_job(store, 3)
    store.record({job_id: [result(0)]})
    info = store.cancel(job_id)
    assert info.status is JobStatus.CANCELLED
    assert store.record({job_id: [result(1)]}) == {job_id: 1}  # a batch in flight still lands
    assert store.get(job_id).status is JobStatus.CANCELLED
    assert [r.index for r in store.results(job_id)] == [0, 1]
    assert 0 < store.redis.ttl(keyspace.results(job_id)) <= TTL_S


def test_results_of_a_vanished_job_are_not_written(store: Store) -> None:
    job_id = make_job(store, 1)
    store.redis.delete(keyspace.job(job_id))
    assert store.record({job_id: [result(0)]}) == {job_id: -1}
    assert not store.redis.exists(keyspace.results(job_id))


def test_unknown_job_says_it_may_have_expired(store: Store) -> None:
    with pytest.raises(JobNotFoundError, match="expired"):
        store.get("0" * 32)
    with pytest.raises(JobNotFoundError):
        store.results("0" * 32)


def test_admit_starts_the_job_and_reports_items_already_done(store: Store) -> None:
    job_id = make_job(store, 3)
    store.record({job_id: [result(1)]})
    admission = store.admit(job_id, [0, 1, 2])
    assert (admission.status, admission.total, admission.done) == (JobStatus.RUNNING, 3, {1})
    assert admission.params is not None
    assert admission.bad_index is None
    assert store.get(job_id).started_at is not None
    assert store.admit("f" * 32, [0]).status is None


@pytest.mark.parametrize("index", [3, -1, 10**12])
def test_a_message_with_an_index_outside_its_job_changes_nothing(store: Store, index: int) -> None:
    job_id = make_job(store, 3)
    admission = store.admit(job_id, [0, index])
    assert (admission.status, admission.bad_index) == (JobStatus.QUEUED, str(index))
    assert store.get(job_id).started_at is None


def test_the_results_script_refuses_an_index_outside_the_job(store: Store) -> None:
    job_id = make_job(store, 1)
    assert store.record({job_id: [result(0), result(31), result(-1)]}) == {job_id: 1}
    info = store.get(job_id)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 1, 0)
    assert store.redis.hkeys(keyspace.results(job_id)) == ["0"]


def test_record_reports_new_results_per_job_alongside_batch_counters(store: Store) -> None:
    a, b = make_job(store, 2), make_job(store, 2)
    batch = BatchStats("w-record", sequences=3, items=3, tokens=9)
    assert store.record({a: [result(0), result(1)], b: [result(0)]}, batch) == {a: 2, b: 1}


@pytest.fixture
def hold(store: Store) -> Iterator[Callable[..., None]]:
    """Writes leases as kombu does when a worker takes messages; removes them afterwards."""
    written: list[str] = []

    def hold(*tags: str) -> None:
        for tag in tags:
            store.redis.hset(leases.unacked_key(), tag, "[message]")
            store.redis.zadd(leases.unacked_index_key(), {tag: time.time()})
        written.extend(tags)

    yield hold
    if written:
        store.redis.hdel(leases.unacked_key(), *written)
        store.redis.zrem(leases.unacked_index_key(), *written)


def held(store: Store, *tags: str) -> list[str]:
    """Which of ``tags`` are still leased: in kombu's hash and its index both (never one)."""
    in_hash = [t for t in tags if store.redis.hexists(leases.unacked_key(), t)]
    in_index = [t for t in tags if store.redis.zscore(leases.unacked_index_key(), t) is not None]
    assert in_hash == in_index
    return in_hash


def test_results_that_end_a_message_take_its_lease_with_them(
    store: Store, hold: Callable[..., None]
) -> None:
    a, b = make_job(store, 2), make_job(store, 2)
    hold("tag-ends-a", "tag-ends-b", "tag-stays")
    stored = store.record_new(
        {a: [result(0), result(1)], b: [result(0)]},
        settle={a: ["tag-ends-a"], b: ["tag-ends-b"]},
    )
    assert sorted((r.index, r.prompt) for r in stored) == [(0, "p0"), (0, "p0"), (1, "p1")]
    assert held(store, "tag-ends-a", "tag-ends-b", "tag-stays") == ["tag-stays"]
    assert store.get(a).status is JobStatus.COMPLETED


def test_a_results_write_without_messages_to_settle_leaves_every_lease(
    store: Store, hold: Callable[..., None]
) -> None:
    job_id = make_job(store, 1)
    hold("tag-held")
    assert store.record({job_id: [result(0)]}) == {job_id: 1}
    store.record_new({job_id: [result(0)]})
    assert held(store, "tag-held") == ["tag-held"]


def test_a_results_write_that_fails_keeps_the_lease_of_the_message(
    store: Store, hold: Callable[..., None]
) -> None:
    job_id = make_job(store, 1)
    hold("tag-kept")
    store.redis.set(keyspace.results(job_id), "not a hash")  # the script fails on HSETNX
    with pytest.raises(redis.exceptions.ResponseError):
        store.record_new({job_id: [result(0)]}, settle={job_id: ["tag-kept"]})
    assert held(store, "tag-kept") == ["tag-kept"]


def test_a_message_of_a_vanished_job_is_settled_with_nothing_written(
    store: Store, hold: Callable[..., None]
) -> None:
    hold("tag-gone")
    assert store.record_new({"gone": [result(0)]}, settle={"gone": ["tag-gone"]}) == []
    assert held(store, "tag-gone") == []


def test_a_heartbeat_never_recreates_a_removed_worker(store: Store) -> None:
    assert store.heartbeat("gone-worker", 1.0) is False
    assert not store.redis.exists(keyspace.worker("gone-worker"))


def test_an_idempotency_key_whose_job_expired_binds_afresh(store: Store) -> None:
    job_id = make_job(store, 1)
    key = f"k-{job_id}"
    assert store.claim_idempotency_key(key, "fp", job_id) is None
    assert store.claim_idempotency_key(key, "fp", "other") == job_id
    store.redis.delete(keyspace.job(job_id))
    assert store.claim_idempotency_key(key, "fp2", "newer") is None
    assert store.redis.get(keyspace.idempotency(key)) == "fp2 newer"


def test_an_idempotency_key_bound_to_a_job_that_failed_to_enqueue_binds_afresh(
    store: Store,
) -> None:
    job_id = make_job(store, 1)
    key = f"k-failed-{job_id}"
    assert store.claim_idempotency_key(key, "fp", job_id) is None
    store.fail(job_id, "could not enqueue the job; submit it again")
    assert store.claim_idempotency_key(key, "fp", "retried") is None


def test_submitters_racing_for_one_key_make_one_job(settings: Settings) -> None:
    idle = settings.model_copy(update={"queue": "nobody-reads-this"})
    for round_ in range(10):
        key = f"race-{round_}-{time.time_ns()}"
        clients = [Client(settings=idle) for _ in range(4)]
        barrier = threading.Barrier(4)

        def submit(client: Client, key: str = key, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return client.submit(["same", "content"], idempotency_key=key)

        with ThreadPoolExecutor(4) as pool:
            ids = set(pool.map(submit, clients))
        assert len(ids) == 1, ids
        (job_id,) = ids
        r = clients[0].store.redis
        assert r.exists(keyspace.job(job_id))


def test_an_idempotency_key_reused_for_other_content_is_refused(store: Store) -> None:
    job_id = make_job(store, 1)
    key = f"k2-{job_id}"
    assert store.claim_idempotency_key(key, "aaaa", job_id) is None
    with pytest.raises(IdempotencyConflictError, match=f"already used for job {job_id}"):
        store.claim_idempotency_key(key, "bbbb", "other")
    assert store.claim_idempotency_key(key, "aaaa", "again") == job_id


def test_a_submit_waits_until_the_append_only_file_holds_the_job(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "aof", appendonly=True, binary=valkey_binary())
    server.start()
    try:
        client = Client(settings=Settings(redis_url=server.url))
        job_id = client.submit(["durable"])
        stats = client.store.redis.info("commandstats")
        assert stats["cmdstat_waitaof"]["calls"] == 1  # WAITAOF confirmed the fsync
        assert stats["cmdstat_waitaof"]["failed_calls"] == 0
        assert client.store.confirm_durable(job_id, 5) is True
    finally:
        server.stop()


def test_a_server_without_persistence_cannot_confirm_durability(store: Store) -> None:
    assert store.confirm_durable(make_job(store, 1), 5) is False


def test_a_job_past_its_deadline_turns_expired_when_read(store: Store) -> None:
    job_id = new_job_id()
    spec = JobSpec(items=[JobItem(prompt="p")], expires_in_s=0.2)
    assert store.create_job(job_id, NewJob.of(spec)).expires_at is not None
    assert store.statuses([job_id])[job_id] is JobStatus.QUEUED
    time.sleep(0.3)
    info = store.get(job_id)
    assert (info.status, info.finished_at is not None) == (JobStatus.EXPIRED, True)
    admission = store.admit(job_id, [0])
    assert (admission.status, admission.done) == (JobStatus.EXPIRED, set())
    assert 0 < store.redis.ttl(keyspace.job(job_id)) <= TTL_S


def test_admitting_a_message_after_the_deadline_expires_the_job(store: Store) -> None:
    job_id = new_job_id()
    store.create_job(job_id, NewJob.of(JobSpec(items=[JobItem(prompt="p")], expires_in_s=0.1)))
    time.sleep(0.2)
    admission = store.admit(job_id, [0])
    assert (admission.status, admission.done) == (JobStatus.EXPIRED, set())


def test_a_worker_record_lost_in_an_outage_comes_back_with_its_counters(store: Store) -> None:
    now = datetime.now(timezone.utc)
    info = WorkerInfo(
        id=f"w-{new_job_id()}", hostname="h", pid=1, engine="null", model="none", device="cpu",
        max_batch_size=4, started_at=now, last_seen=now,
    )  # fmt: skip
    store.register_worker(info, 1.0)
    store.record({}, BatchStats(info.id, sequences=4, items=4, tokens=40))
    store.redis.delete(keyspace.worker(info.id))  # expired while Redis was away...
    store.record({}, BatchStats(info.id, sequences=2, items=2, tokens=20))  # ...then counted
    assert 0 < store.redis.ttl(keyspace.worker(info.id)) <= 3600  # an orphan would expire
    assert store.heartbeat(info.id, 1.0) is False  # a partial record is not a live worker
    store.register_worker(info, 1.0)
    (listed,) = [w for w in store.workers(1.0) if w.id == info.id]
    assert (listed.batches, listed.items, listed.tokens) == (1, 2, 20)
    assert listed.batch_sizes == {4: 1, 2: 1}


def test_record_new_returns_only_the_results_it_wrote_each_once(store: Store) -> None:
    job_id = make_job(store, 3)
    store.record({job_id: [result(0, "earlier")]})
    first, copy = result(1, "first"), result(1, "copy")
    stored = store.record_new({job_id: [result(0, "again"), first, copy, result(2)]})
    assert [(r.index, r.outputs) for r in stored] == [(1, ["first"]), (2, ["out"])]
    assert store.results(job_id)[1].outputs == ["first"]
