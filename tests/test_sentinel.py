"""Redis Sentinel: genq's ``sentinel://`` URLs (one syntax for GENQ_REDIS_URL and
GENQ_RESULTS_URL), and a failover on real processes: a primary, a replica and three Sentinels
(`redis-server --sentinel`), a real `null` worker whose broker and results store both go
through the Sentinels, and the primary SIGKILLed in the middle of a job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import RedisProcess
from null_workers import start_null_worker
from tlsutil import make_certificates, tls_unavailable_reason

from genq import keyspace, leases
from genq.connection import connect
from genq.devtools.sentinel import MASTER_NAME, Security, SentinelGroup, ServerProcess
from genq.errors import BrokerUnavailableError, RedisAccessError, RedisUrlError
from genq.producer.client import Client
from genq.redis_urls import check_redis_url
from genq.sentinel import kombu_broker, parse_sentinel_url
from genq.settings import Settings
from genq.worker.flow import ReplicaBarrier

QUEUE = "sentinel"
TOTAL = 3000
SECRET = "s3cr3t-pw"
SENTINEL_SECRET = "sentinel-only-pw"

# --- the URL's text ----------------------------------------------------------------------------


def assert_acked(broker: redis.Redis, timeout_s: float = 10) -> None:
    """Nothing left held: the last message's ack follows its job's end (on the worker's event
    loop, after any replica barrier), so a loaded machine may take a moment."""
    deadline = time.monotonic() + timeout_s
    while broker.zcard(leases.unacked_index_key()) != 0:
        assert time.monotonic() < deadline, "messages still held after the job ended"
        time.sleep(0.1)


def test_a_sentinel_url_names_the_sentinels_the_master_the_database_and_the_logins() -> None:
    url = (
        f"sentinel://genq:{SECRET}%23@s1:26380,s2,[::1]:26381/mymaster/3"
        f"?sentinel_password=other&ssl=true&ssl_ca_certs=/ca.pem"
    )
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == [("s1", 26380), ("s2", 26379), ("::1", 26381)]
    assert (parsed.master_name, parsed.db) == ("mymaster", 3)
    assert (parsed.username, parsed.password) == ("genq", f"{SECRET}#")
    assert parsed.sentinel_password == "other"
    assert parsed.tls_options() == {
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
    }
    assert parse_sentinel_url("sentinel://s1/mymaster").db == 0
    # kombu gets its own form: every Sentinel a URL with the login and database.
    broker, options = kombu_broker(url)
    assert broker == (
        f"sentinel://genq:{SECRET}%23@s1:26380/3;sentinel://genq:{SECRET}%23@s2:26379/3;"
        f"sentinel://genq:{SECRET}%23@[::1]:26381/3"
    )
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "other"
    assert SECRET not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://s1:26379;sentinel://s2:26379", "kombu's form"),
        ("sentinel://s1:26379", "names no master"),
        ("sentinel://s1:26379/", "names no master"),
        ("sentinel://s1:26379/mymaster/zero", "not a database number"),
        ("sentinel://s1:26379/mymaster/0/1", "not a database number"),
        ("sentinel://s1:port/mymaster", "is not a Sentinel's host[:port]"),
        ("sentinel://s1:99999/mymaster", "is not a TCP port"),
        ("sentinel://s1,/mymaster", "is not a Sentinel's host[:port]"),
        ("sentinel://s1/mymaster?master_name=x", "does not take: 'master_name'"),
        ("sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", "add ssl=true"),
        ("sentinel://s1/mymaster?ssl=maybe", "write ssl=true"),
        (f"sentinel://:{SECRET}#1@s1/mymaster", "# as %23"),
        (f"sentinel://:{SECRET}/x@s1/mymaster", "/ as %2F"),
    ],
)
def test_a_sentinel_url_that_does_not_fit_is_refused_naming_its_variable(
    url: str, message: str
) -> None:
    for setting in ("GENQ_REDIS_URL", "GENQ_RESULTS_URL"):
        with pytest.raises(RedisUrlError) as e:
            check_redis_url(url, setting)
        assert message in str(e.value)
        assert setting in str(e.value)
        assert SECRET not in str(e.value)


# --- real Sentinels --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A primary with an append-only file, one replica, three Sentinels (quorum 2) that call
    the primary down after 1 s of silence."""
    sentinels = SentinelGroup(tmp_path_factory.mktemp("sentinel"), replicas=1, sentinels=3)
    sentinels.start()
    yield sentinels
    sentinels.stop()


def test_sentinels_that_monitor_no_such_master_are_a_clear_error(group: SentinelGroup) -> None:
    url = group.url().replace(f"/{MASTER_NAME}/", "/no-such-master/")
    with pytest.raises(RedisAccessError) as e:
        Client(settings=Settings(redis_url=url)).jobs()
    assert f"monitor no master named 'no-such-master' (they monitor: {MASTER_NAME})" in str(e.value)
    primary = f"sentinel://127.0.0.1:{group.primary_port()}/{MASTER_NAME}/0"  # not a Sentinel
    with pytest.raises(RedisAccessError) as e:
        Client(settings=Settings(redis_url=url, results_url=primary)).jobs()
    assert "GENQ_RESULTS_URL" in str(e.value)
    assert "is not a Redis Sentinel" in str(e.value)


def test_the_primary_sigkilled_mid_job_fails_over_and_every_item_ends_exactly_once(
    group: SentinelGroup, tmp_path: Path
) -> None:
    broker_url, results_url = group.url(0), group.url(1)  # both through the Sentinels
    worker = start_null_worker(
        tmp_path / "worker.log",
        redis_url=broker_url,
        results_url=results_url,
        queue=QUEUE,
        max_batch_size="32",
        null_batch_ms="60",  # ~100 batches: about 8 s of work
        lease_s="6",
    )
    killed: ServerProcess | None = None
    try:
        settings = Settings(
            redis_url=broker_url, results_url=results_url, queue=QUEUE, chunk_size=16
        )
        client = Client(settings=settings)
        # Accepted means on a replica too (WAIT 1): the failover cannot lose the job itself.
        job_id = client.submit([f"prompt {i}" for i in range(TOTAL)])
        deadline = time.monotonic() + 60
        while (done := client.status(job_id).done) < TOTAL // 5:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.05)
        assert done < TOTAL * 3 // 4, "the job ran too fast to be killed in the middle"
        old_port = group.primary_port()
        killed_at = time.time()
        killed = group.kill_primary()  # SIGKILL, mid-job
        new_port = group.wait_for_failover(old_port)
        failed_over_s = time.time() - killed_at

        info = client.wait(job_id, timeout_s=90)  # rides out the failover
        assert (info.status.value, info.completed, info.failed) == ("completed", TOTAL, 0)
        results = list(client.iter_results(job_id))
        assert [r.index for r in results] == list(range(TOTAL))  # each once, in input order
        assert client.store.redis.hlen(keyspace.results(job_id)) == TOTAL
        assert client.store.redis.info("server")["tcp_port"] == new_port  # the new primary
        # The job went on after the failover, on the same worker, which never stopped.
        after = [r for r in results if r.timing is not None and r.timing.finished_at > killed_at]
        assert len(after) >= TOTAL // 4
        assert {r.worker_id for r in results} == {client.workers()[0].id}
        assert worker.process.poll() is None, worker.output()[-3000:]
        # Nothing is left held or pending on the new primary.
        assert_acked(client.broker)
        assert client.broker.llen(keyspace.sched_pending(QUEUE, job_id)) == 0
        # New work goes through the new primary.
        later = client.submit(["after the failover"])
        assert client.wait(later, timeout_s=30).completed == 1
        print(f"failover took {failed_over_s:.1f} s; {done} of {TOTAL} items done at the kill")
    finally:
        worker.stop()
        if killed is not None:
            group.restart(killed)  # a replica again, for the next tests (even after a failure)


def test_a_client_rides_out_a_failover_and_says_what_it_waits_for(group: SentinelGroup) -> None:
    client = connect(group.url(2), "GENQ_RESULTS_URL")
    client.set("genq:probe", "1")
    client.execute_command("WAIT", 1, 5000)  # type: ignore[no-untyped-call]
    old_port = group.primary_port()
    killed = group.kill_primary()
    with pytest.raises(BrokerUnavailableError) as e:  # the Sentinels still name the dead one
        Client(settings=Settings(redis_url=group.url(0), results_url=group.url(2))).jobs()
    assert "GENQ_RESULTS_URL" in str(e.value)
    assert "the Sentinels at" in str(e.value)
    group.wait_for_failover(old_port)
    assert client.get("genq:probe") == "1"  # the same client, now on the promoted replica
    group.restart(killed)


def test_with_the_results_on_their_own_sentinels_their_failover_loses_no_item(
    group: SentinelGroup, tmp_path: Path
) -> None:
    """The broker a plain Redis, the results behind the Sentinels: an ack on the broker must
    not outlive a result lost with the results' primary (each ack waits for a replica)."""
    broker = RedisProcess(tmp_path / "broker")
    broker.start()
    results_url = group.url(3)
    worker = start_null_worker(
        tmp_path / "worker.log",
        redis_url=broker.url,
        results_url=results_url,
        queue=QUEUE,
        max_batch_size="32",
        null_batch_ms="60",
        lease_s="6",
    )
    killed: ServerProcess | None = None
    try:
        settings = Settings(redis_url=broker.url, results_url=results_url, queue=QUEUE)
        client = Client(settings=settings.model_copy(update={"chunk_size": 16}))
        job_id = client.submit([f"prompt {i}" for i in range(TOTAL)])
        deadline = time.monotonic() + 60
        while client.status(job_id).done < TOTAL // 5:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.05)
        old_port = group.primary_port()
        killed = group.kill_primary()
        group.wait_for_failover(old_port)
        info = client.wait(job_id, timeout_s=90)
        assert (info.status.value, info.completed, info.failed) == ("completed", TOTAL, 0)
        assert [r.index for r in client.iter_results(job_id)] == list(range(TOTAL))
        assert client.store.redis.hlen(keyspace.results(job_id)) == TOTAL
        assert_acked(client.broker)
        assert worker.process.poll() is None, worker.output()[-3000:]
    finally:
        worker.stop()
        broker.stop()
        if killed is not None:
            group.restart(killed)


def test_an_ack_waits_until_a_replica_of_the_results_store_has_its_results(
    group: SentinelGroup,
) -> None:
    barrier = ReplicaBarrier(connect(group.url(4)), enabled=True, timeout_s=0.5)
    started = time.monotonic()
    assert barrier.confirmed(started)
    assert time.monotonic() - started < 0.5  # the replica answers at once
    assert barrier.confirmed(started - 1)  # written before the last confirmation: no wait
    (replica,) = [s for s in group.servers() if s.port != group.primary_port()]
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # a replica that acknowledges nothing
    try:
        held = time.monotonic()
        # Held for the timeout, and not confirmed: the ack waits (the caller tries again).
        assert not barrier.confirmed(held)
        assert time.monotonic() - held >= 0.5
    finally:
        replica.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while not barrier.confirmed(held):  # the replica is back: the ack goes
        assert time.monotonic() < deadline
        time.sleep(ReplicaBarrier.RETRY_S)


@pytest.fixture(scope="module")
def secured_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """TLS only (primary, replica and Sentinel), a password on the servers and another on the
    Sentinel."""
    reason = tls_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no TLS server: {reason}")
    certificates = make_certificates(tmp_path_factory.mktemp("sentinel-ca"))
    security = Security(
        password=SECRET,
        sentinel_password=SENTINEL_SECRET,
        ca_cert=certificates.ca_cert,
        cert=certificates.server_cert,
        key=certificates.server_key,
    )
    sentinels = SentinelGroup(
        tmp_path_factory.mktemp("sentinel-tls"), sentinels=1, security=security
    )
    sentinels.start()
    yield sentinels
    sentinels.stop()


def test_tls_and_a_password_through_the_sentinels_for_broker_and_results(
    secured_group: SentinelGroup, tmp_path: Path
) -> None:
    assert secured_group.security.ca_cert is not None
    trust = f"?ssl=true&ssl_ca_certs={secured_group.security.ca_cert}"
    trust += f"&sentinel_password={SENTINEL_SECRET}"
    login = f":{SECRET}@"
    broker_url = secured_group.url(0, login, trust)
    results_url = secured_group.url(1, login, trust)
    worker = start_null_worker(
        tmp_path / "worker.log", redis_url=broker_url, results_url=results_url, queue=QUEUE
    )
    try:
        client = Client(
            settings=Settings(redis_url=broker_url, results_url=results_url, queue=QUEUE)
        )
        job_id = client.submit([f"prompt {i}" for i in range(100)])
        info = client.wait(job_id, timeout_s=60)
        assert (info.status.value, info.completed) == ("completed", 100)
        assert [r.index for r in client.iter_results(job_id)] == list(range(100))
        assert client.store.redis.connection_pool.connection_kwargs["ssl_ca_certs"]
    finally:
        worker.stop()
    # The CA not trusted: refused, saying so and naming the variable, never the password.
    untrusted = secured_group.url(1, login, f"?ssl=true&sentinel_password={SENTINEL_SECRET}")
    with pytest.raises(RedisAccessError) as e:
        Client(settings=Settings(redis_url=broker_url, results_url=untrusted)).jobs()
    assert "certificate was not verified" in str(e.value)
    assert "GENQ_RESULTS_URL" in str(e.value)
    assert SECRET not in str(e.value)
    wrong = secured_group.url(1, ":wrong@", trust)
    with pytest.raises(RedisAccessError) as e:
        Client(settings=Settings(redis_url=broker_url, results_url=wrong)).jobs()
    assert "refused the credentials" in str(e.value)
    no_login = trust.replace(f"&sentinel_password={SENTINEL_SECRET}", "")
    with pytest.raises(RedisAccessError) as e:
        Client(settings=Settings(redis_url=secured_group.url(0, login, no_login))).jobs()
    assert "refused genq's login; set sentinel_password=" in str(e.value)
    assert "GENQ_REDIS_URL" in str(e.value)
    assert SENTINEL_SECRET not in str(e.value)
