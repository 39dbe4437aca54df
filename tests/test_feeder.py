"""The fair feeder's Lua against a real Redis: the order messages reach the Celery queue in
(priorities, tenant weights, round-robin between jobs), what ended jobs leave behind, and the
quotas checked when a job is created."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from conftest import RedisProcess

from genq import keyspace
from genq.errors import QuotaExceededError
from genq.feeder import Feeder
from genq.schema import GenerationParams, Priority
from genq.settings import Settings
from genq.submissions import NewJob, SubmissionStore

_ids = itertools.count()
_batches = itertools.count(1)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A server of this module's own: the tests flush it, and no worker consumes from it."""
    server = RedisProcess(tmp_path_factory.mktemp("feeder-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db(own_server: RedisProcess) -> redis.Redis:
    client = redis.Redis.from_url(own_server.url, decode_responses=True)
    client.flushdb()
    return client


@pytest.fixture
def store(db: redis.Redis) -> SubmissionStore:
    return SubmissionStore(db, result_ttl_s=3600)


def feeder_of(db: redis.Redis, depth: int = 1, **settings: object) -> Feeder:
    return Feeder(db, Settings(feed_depth=depth, **settings))  # type: ignore[arg-type]


def new_job(
    store: SubmissionStore,
    total: int = 100,
    tenant: str | None = None,
    priority: Priority = Priority.NORMAL,
) -> str:
    job_id = f"job{next(_ids)}"
    record = {"tenant": tenant} if tenant else {}
    job = NewJob(total=total, params=GenerationParams(), record_fields=record, priority=priority)
    store.create_job(job_id, job)
    return job_id


def stage(
    feeder: Feeder, store: SubmissionStore, job_id: str, messages: int, items: int = 1
) -> None:
    info = store.get(job_id)
    tenant = info.tenant or "default"
    entries = [(items, f"{job_id}/{n}") for n in range(messages)]
    batch = next(_batches)  # each staging its own number, as a producer counts them
    assert feeder.stage(job_id, info.priority, tenant, batch, entries)


def dispatch_order(db: redis.Redis, feeder: Feeder, count: int) -> list[str]:
    """Messages in the order workers would take them (kombu pops from the right), refilling
    after each one as a worker does when it takes a message."""
    lists = keyspace.celery_queue_lists(feeder.queue)
    taken: list[str] = []
    feeder.refill()
    for _ in range(count):
        payload = db.rpop(lists[0]) or db.rpop(lists[1])  # as kombu's BRPOP on both
        if payload is None:
            break
        taken.append(payload)
        feeder.refill()
    return taken


def jobs_of(payloads: list[str]) -> list[str]:
    return [p.split("/")[0] for p in payloads]


def test_jobs_of_one_tenant_take_turns_one_message_each(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    a, b = new_job(store), new_job(store)
    stage(feeder, store, a, 4)
    stage(feeder, store, b, 4)
    order = jobs_of(dispatch_order(db, feeder, 8))
    assert order[1:7] == [b, a, b, a, b, a] or order[1:7] == [a, b, a, b, a, b]
    assert Counter(order) == {a: 4, b: 4}


def test_a_job_keeps_its_messages_in_order(db: redis.Redis, store: SubmissionStore) -> None:
    feeder = feeder_of(db)
    a = new_job(store)
    stage(feeder, store, a, 3)
    stage(feeder, store, a, 3)  # a second batch, as a producer stages a big job
    assert dispatch_order(db, feeder, 6) == [f"{a}/{n}" for n in (0, 1, 2, 0, 1, 2)]


def test_a_new_job_is_served_next_not_after_the_big_one(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    big = new_job(store, total=10_000)
    stage(feeder, store, big, 500)
    dispatch_order(db, feeder, 10)
    small = new_job(store)
    stage(feeder, store, small, 2)
    order = jobs_of(dispatch_order(db, feeder, 5))
    assert order.count(small) == 2
    # Before it: the message already queued, and the big job's turn in the current round.
    assert order.index(small) <= 2


def test_tenants_share_by_weight_counted_in_items(db: redis.Redis, store: SubmissionStore) -> None:
    db.hset(keyspace.tenant_policy("gold"), "weight", 3)
    feeder = feeder_of(db)
    gold, bronze = new_job(store, tenant="gold"), new_job(store, tenant="bronze")
    stage(feeder, store, gold, 200)
    stage(feeder, store, bronze, 200)
    order = jobs_of(dispatch_order(db, feeder, 100))
    assert 72 <= order.count(gold) <= 78


def test_a_tenant_with_big_messages_gets_no_more_items_than_one_with_small(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    bulky, lean = new_job(store, tenant="bulky"), new_job(store, tenant="lean")
    stage(feeder, store, bulky, 50, items=16)
    stage(feeder, store, lean, 800, items=1)
    order = jobs_of(dispatch_order(db, feeder, 170))
    items = Counter({bulky: 16 * order.count(bulky), lean: order.count(lean)})
    assert abs(items[bulky] - items[lean]) <= 16


def test_an_idle_tenant_banks_no_credit(db: redis.Redis, store: SubmissionStore) -> None:
    feeder = feeder_of(db)
    early = new_job(store, tenant="early")
    stage(feeder, store, early, 300)
    dispatch_order(db, feeder, 100)  # "late" was idle meanwhile
    late = new_job(store, tenant="late")
    stage(feeder, store, late, 300)
    order = jobs_of(dispatch_order(db, feeder, 40))
    assert 18 <= order.count(late) <= 22  # an equal share from now on, not 100 in a row


def test_high_priority_goes_first_even_behind_a_full_queue(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db, depth=4)
    normal = new_job(store)
    stage(feeder, store, normal, 50)
    urgent = new_job(store, priority=Priority.HIGH)
    stage(feeder, store, urgent, 3)
    # The queue already held 4 normal messages: the urgent ones go ahead of them.
    order = jobs_of(dispatch_order(db, feeder, 6))
    assert order[:3] == [urgent] * 3


def test_low_priority_gets_one_message_in_ten_under_sustained_normal_load(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    normal = new_job(store)
    low = new_job(store, priority=Priority.LOW)
    stage(feeder, store, normal, 500)
    stage(feeder, store, low, 500)
    order = jobs_of(dispatch_order(db, feeder, 200))
    assert order.count(low) in (19, 20)  # GENQ_STARVE_AFTER_MESSAGES=9: one in every ten


def test_low_priority_runs_alone_when_nothing_else_waits(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    low = new_job(store, priority=Priority.LOW)
    stage(feeder, store, low, 5)
    assert jobs_of(dispatch_order(db, feeder, 5)) == [low] * 5


def test_a_cancelled_job_s_pending_messages_are_never_queued(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    kept, cancelled = new_job(store), new_job(store)
    stage(feeder, store, kept, 5)
    stage(feeder, store, cancelled, 5)
    store.cancel(cancelled)  # without drop(): the refill drops them when their turn comes
    order = jobs_of(dispatch_order(db, feeder, 10))
    assert cancelled not in order[1:]
    assert order.count(kept) == 5
    assert db.exists(keyspace.sched_prefix(feeder.queue) + f"pending:{cancelled}") == 0
    assert feeder.view().jobs == []


def test_drop_removes_a_job_s_pending_messages_at_once(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db)
    job = new_job(store)
    stage(feeder, store, job, 5)
    assert [j.items for j in feeder.view().jobs] == [4]  # one went to the queue
    assert feeder.drop(job)
    assert feeder.view().jobs == []
    assert not feeder.drop(job)


def test_staging_for_an_ended_job_stages_nothing(db: redis.Redis, store: SubmissionStore) -> None:
    feeder = feeder_of(db)
    job = new_job(store)
    store.cancel(job)
    assert not feeder.stage(job, Priority.NORMAL, "default", 1, [(1, "x")])
    assert feeder.view().jobs == []


def test_the_view_shows_items_pending_per_priority_and_what_is_ahead(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db, depth=1)
    urgent = new_job(store, priority=Priority.HIGH)
    normal = new_job(store, tenant="acme")
    stage(feeder, store, urgent, 3, items=10)  # one goes to the (depth 1) queue at once
    stage(feeder, store, normal, 2, items=10)
    view = feeder.view()
    assert view.items_at(Priority.HIGH) == 20
    assert view.items_at(Priority.NORMAL, "acme") == 20
    assert view.ahead_of(normal) == 20
    assert view.ahead_of(urgent) == 0
    assert view.ready_messages == 1


def test_a_quota_of_jobs_in_progress_refuses_and_writes_nothing(
    db: redis.Redis, store: SubmissionStore
) -> None:
    db.hset(keyspace.tenant_policy("acme"), "max_jobs_in_progress", 2)
    first, _ = new_job(store, tenant="acme"), new_job(store, tenant="acme")
    before = db.dbsize()
    with pytest.raises(QuotaExceededError, match="max_jobs_in_progress=2") as refused:
        new_job(store, tenant="acme")
    assert refused.value.retry_after_s > 0
    assert db.dbsize() == before
    assert db.zcard(keyspace.jobs_index()) == 2
    new_job(store, tenant="other")  # another tenant's quota is its own
    store.cancel(first)  # an ended job stops counting
    new_job(store, tenant="acme")


def test_a_quota_of_queued_items_counts_items_not_yet_done(
    db: redis.Redis, store: SubmissionStore
) -> None:
    db.hset(keyspace.tenant_policy("acme"), "max_queued_items", 100)
    job = new_job(store, total=80, tenant="acme")
    with pytest.raises(QuotaExceededError, match="max_queued_items=100"):
        new_job(store, total=30, tenant="acme")
    db.hincrby(keyspace.job(job), "completed", 20)  # 60 left
    new_job(store, total=30, tenant="acme")


def test_urgent_messages_are_first_in_first_out(db: redis.Redis, store: SubmissionStore) -> None:
    feeder = feeder_of(db, depth=2)
    first = new_job(store, priority=Priority.HIGH)
    stage(feeder, store, first, 1)
    later = []
    for _ in range(20):  # a steady stream of urgent single requests
        later.append(new_job(store, priority=Priority.HIGH))
        stage(feeder, store, later[-1], 1)
    order = jobs_of(dispatch_order(db, feeder, 21))
    assert order == [first, *later]


def test_a_starved_level_s_turn_never_holds_urgent_work_back(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db, depth=4)
    normal, low = new_job(store), new_job(store, priority=Priority.LOW)
    stage(feeder, store, normal, 100)
    stage(feeder, store, low, 100)
    dispatch_order(db, feeder, 8)  # low is due its turn soon; the queue is full
    urgent = new_job(store, priority=Priority.HIGH)
    stage(feeder, store, urgent, 1)
    assert jobs_of(dispatch_order(db, feeder, 1)) == [urgent]


def test_a_staging_retried_after_a_lost_reply_stages_nothing_twice(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db, depth=1)
    job = new_job(store)
    entries = [(1, f"{job}/{n}") for n in range(3)]
    assert feeder.stage(job, Priority.NORMAL, "default", 1, entries)
    assert feeder.stage(job, Priority.NORMAL, "default", 1, entries)  # the same batch again
    assert jobs_of(dispatch_order(db, feeder, 10)) == [job] * 3


def test_an_idle_level_starts_its_clock_again(db: redis.Redis, store: SubmissionStore) -> None:
    db.hset(keyspace.tenant_policy("light"), "weight", 0.001)
    feeder = feeder_of(db)
    light = new_job(store, tenant="light")
    stage(feeder, store, light, 3, items=16)
    dispatch_order(db, feeder, 3)
    assert db.get(keyspace.sched_prefix(feeder.queue) + "clock:normal") is None


def test_with_the_job_records_elsewhere_the_scripts_read_no_job_key(db: redis.Redis) -> None:
    """GENQ_RESULTS_URL on another Redis: no job record here. Messages still go, in fair
    order; a retried staging still stages nothing twice; a drop refuses later stagings."""
    feeder = Feeder(db, Settings(feed_depth=1), jobs_here=False)
    gold, other = "gold-job", "other-job"  # records that do not exist on this Redis
    db.hset(keyspace.tenant_policy("gold"), "weight", 3)
    entries = [(1, f"{gold}/{n}") for n in range(40)]
    assert feeder.stage(gold, Priority.NORMAL, "gold", 1, entries)
    assert feeder.stage(gold, Priority.NORMAL, "gold", 1, entries)  # retried: nothing more
    assert feeder.stage(
        other, Priority.NORMAL, "bronze", 1, [(1, f"{other}/{n}") for n in range(40)]
    )
    order = jobs_of(dispatch_order(db, feeder, 40))
    assert 28 <= order.count(gold) <= 32  # weights read here, 3:1
    prefix = keyspace.sched_prefix(feeder.queue)
    assert db.get(f"{prefix}staged:{gold}") == "1"
    assert 0 < db.ttl(keyspace.sched_pending(feeder.queue, gold)) <= Settings().unfinished_ttl_s
    assert not db.exists(keyspace.job(gold))  # nothing written where a job record would be
    assert feeder.drop(gold)
    assert feeder.view().pending_items(gold) == 0
    assert db.ttl(f"{prefix}dropped:{gold}") > 0
    assert not feeder.stage(gold, Priority.NORMAL, "gold", 2, [(1, f"{gold}/late")])
    assert feeder.view().pending_items(gold) == 0
    rest = jobs_of(dispatch_order(db, feeder, 100))  # the one queued before the drop, then
    assert set(rest[1:]) == {other}  # only the other job's
    assert (order + rest).count(other) == 40


def test_the_queue_holds_as_many_prompts_in_large_messages_as_in_small_ones(
    db: redis.Redis, store: SubmissionStore
) -> None:
    feeder = feeder_of(db, depth=4)  # 4 messages of 16 prompts, or 64 prompts in fewer
    other = keyspace.celery_queue_lists(feeder.queue)[1]
    small, large = new_job(store, 1000), new_job(store, 1000)
    stage(feeder, store, small, 10, items=16)
    assert db.llen(other) == 4
    db.delete(other)  # taken by workers
    feeder.drop(small)
    stage(feeder, store, large, 10, items=64)
    assert db.llen(other) == 1  # one message at least, however large
    db.rpop(other)
    assert feeder.refill() == 1
    assert db.llen(other) == 1
    stage(feeder, store, new_job(store, 1000), 10, items=20)
    assert db.llen(other) == 1  # 64 prompts ahead already: the next job waits its turn
    while db.rpop(other) is not None:
        feeder.refill()
    # The counts of messages workers took are forgotten: a new small job fills 4 messages again.
    stage(feeder, store, new_job(store, 1000), 10, items=16)
    assert db.llen(other) == 4
    assert db.llen(keyspace.sched_prefix(feeder.queue) + "ready:other") == 4
