"""Secured Redis for the broker (Celery/kombu) and the result store (redis-py): TLS with
certificate verification against a CA made in the test, ACL users and passwords; a password
never appears in a log or an error message."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import StartWorker
from kombu.exceptions import OperationalError
from tlsutil import Certificates, SecuredRedis, make_ca, make_certificates, tls_unavailable_reason

from genq import keyspace
from genq.broker import celery_app
from genq.connection import connect
from genq.errors import BrokerUnavailableError
from genq.producer.cli import EXIT_FAILED
from genq.producer.client import Client
from genq.schema import ItemResult
from genq.settings import Settings

Cli = Callable[..., subprocess.CompletedProcess[str]]

PASSWORD = "genq-Secr3t-7a1f"
WRONG_PASSWORD = "Wr0ng-pw-9c2e"
ROOT_PASSWORD = "requirepass-5d3b"
# Least privilege that genq needs, broker included: keys under genq: only, no pub/sub channel,
# data and script commands only (gossip, mingle, events and remote control are off), and INFO,
# which tells genq whether Redis keeps an append-only file (its warnings; without it they are
# skipped).
GENQ_USER = (
    f"genq on >{PASSWORD} ~genq:* resetchannels -@all +@read +@write +@scripting +@connection "
    "+@transaction -@dangerous +info"
)
# `requirepass` is the default user's password: what a password-only URL logs in as.
DEFAULT_USER = f"default on >{ROOT_PASSWORD} ~* &* +@all"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    reason = tls_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no TLS server: {reason}")
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def untrusted_ca(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Path:
    """A CA that did not sign the server's certificate."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), "some other CA")[0]


@pytest.fixture(scope="module")
def tls_redis(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredRedis]:
    """A redis-server that speaks only TLS, with the genq ACL user."""
    server = SecuredRedis(tmp_path_factory.mktemp("tls-redis"), (GENQ_USER,), certificates)
    try:
        server.start()
    except RuntimeError:
        missing = server.missing_tls()
        if missing is not None:
            pytest.skip(f"redis-server is built without TLS: {missing}")
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """A plain redis-server with the genq ACL user and a password for the default user."""
    server = SecuredRedis(tmp_path_factory.mktemp("acl-redis"), (GENQ_USER, DEFAULT_USER))
    server.start()
    yield server
    server.stop()


def write_prompts(directory: Path, prompts: list[str]) -> Path:
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def round_trip(genq_cli: Cli, url: str, directory: Path) -> list[ItemResult]:
    """Submit three prompts through the CLI, wait for them, and read their results."""
    prompts = ["Write a tagline for a bakery", "Le café est prêt", "x"]
    out = directory / "results.jsonl"
    env = {"GENQ_REDIS_URL": url}
    submitted = genq_cli(
        "submit", str(write_prompts(directory, prompts)), "--greedy", "--max-new-tokens", "4",
        "--wait", "--timeout", "60", "-o", str(out), env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert PASSWORD not in submitted.stdout + submitted.stderr
    results = [ItemResult.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [r.prompt for r in results] == prompts
    for result in results:
        assert result.ok, result.error
        assert len(result.outputs) == 1
        assert result.usage.completion_tokens > 0
    listed = genq_cli("workers", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1  # the worker's heartbeat went through the store
    return results


def submit_one(genq_cli: Cli, url: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return genq_cli("submit", str(write_prompts(directory, ["hi"])), env={"GENQ_REDIS_URL": url})


def forget_denials(server: SecuredRedis) -> None:
    with server.admin() as admin:
        admin.acl_log_reset()


def assert_nothing_denied(server: SecuredRedis) -> None:
    """No command, key or login was refused since :func:`forget_denials`: genq stayed inside
    the ACL it was given."""
    with server.admin() as admin:
        assert admin.acl_log() == []


# --- TLS -------------------------------------------------------------------------------------


def round_trip_with_a_worker(
    server: SecuredRedis, url: str, start_worker: StartWorker, genq_cli: Cli, tmp_path: Path
) -> None:
    """A worker and the CLI on ``url``: a job round trips, the ACL denies nothing, and the
    password appears in no output."""
    forget_denials(server)
    worker = start_worker(redis_url=url, max_wait_ms="50")
    try:
        round_trip(genq_cli, url, tmp_path)
    finally:
        worker.stop()
    assert PASSWORD not in worker.output()
    assert_nothing_denied(server)


def test_a_job_round_trips_through_a_tls_only_redis_whose_ca_the_url_names(
    tls_redis: SecuredRedis, start_worker: StartWorker, genq_cli: Cli, tmp_path: Path
) -> None:
    with pytest.raises(redis.ConnectionError):  # the port speaks TLS only: nothing goes in clear
        redis.Redis(port=tls_redis.port, socket_timeout=5).ping()
    url = tls_redis.trusting_url(f"genq:{PASSWORD}")
    round_trip_with_a_worker(tls_redis, url, start_worker, genq_cli, tmp_path)


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_broker_and_store_refuse_a_server_certificate_they_cannot_verify(
    tls_redis: SecuredRedis, untrusted_ca: Path, trust: str
) -> None:
    query = f"ssl_ca_certs={untrusted_ca}" if trust == "another CA" else ""
    url = tls_redis.url(f"genq:{PASSWORD}", query)
    app = celery_app(Settings(redis_url=url))
    with app.connection_for_write() as conn, pytest.raises(OperationalError) as broker_error:
        conn.ensure_connection(max_retries=1, interval_start=0)
    with connect(url) as store, pytest.raises(redis.ConnectionError) as store_error:
        store.ping()
    for error in (broker_error.value, store_error.value):
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert PASSWORD not in str(error)


@pytest.mark.parametrize("trust", ["system CAs", "another CA"])
def test_the_cli_says_the_certificate_was_not_verified_and_enqueues_nothing(
    tls_redis: SecuredRedis, untrusted_ca: Path, trust: str, genq_cli: Cli, tmp_path: Path
) -> None:
    query = f"ssl_ca_certs={untrusted_ca}" if trust == "another CA" else ""
    url = tls_redis.url(f"genq:{PASSWORD}", query)
    with tls_redis.admin() as admin:
        jobs_before = admin.zcard(keyspace.jobs_index())
        submitted = submit_one(genq_cli, url, tmp_path)
        assert admin.zcard(keyspace.jobs_index()) == jobs_before
    assert submitted.returncode == EXIT_FAILED
    assert submitted.stdout == ""
    message = submitted.stderr
    assert f"TLS connection to Redis at rediss://genq:***@127.0.0.1:{tls_redis.port}" in message
    assert "certificate was not verified" in message
    assert "ssl_ca_certs=" in message  # what to do about it
    assert "Traceback" not in message
    assert PASSWORD not in message


# --- passwords and ACL users -----------------------------------------------------------------


def test_a_job_round_trips_with_an_acl_user_confined_to_genq_keys(
    acl_redis: SecuredRedis, start_worker: StartWorker, genq_cli: Cli, tmp_path: Path
) -> None:
    url = acl_redis.url(f"genq:{PASSWORD}")
    with redis.Redis.from_url(url) as confined, pytest.raises(redis.exceptions.NoPermissionError):
        confined.set("outside-genq", "1")  # the ACL is in force
    round_trip_with_a_worker(acl_redis, url, start_worker, genq_cli, tmp_path)


def test_a_password_only_url_logs_in_as_the_default_user_for_broker_and_store(
    acl_redis: SecuredRedis,
) -> None:
    queue = "requirepass-check"  # no worker listens here: the message stays to be counted
    client = Client(settings=Settings(redis_url=acl_redis.url(f":{ROOT_PASSWORD}"), queue=queue))
    job_id = client.submit(["hello"], {"max_new_tokens": 2})
    assert client.status(job_id).status.value == "queued"
    with acl_redis.admin() as admin:
        assert sum(admin.llen(key) for key in keyspace.celery_queue_lists(queue)) == 1


@pytest.mark.parametrize(
    "credentials",
    [f"genq:{WRONG_PASSWORD}", f":{WRONG_PASSWORD}", f"nobody:{WRONG_PASSWORD}"],
    ids=["acl-user", "password-only", "unknown-user"],
)
def test_a_wrong_password_is_refused_clearly_and_never_echoed(
    acl_redis: SecuredRedis, credentials: str, genq_cli: Cli, tmp_path: Path
) -> None:
    url = acl_redis.url(credentials)
    submitted = submit_one(genq_cli, url, tmp_path)
    assert submitted.returncode == EXIT_FAILED
    message = submitted.stderr
    assert "refused the credentials; check the user and password in GENQ_REDIS_URL" in message
    assert f"127.0.0.1:{acl_redis.port}" in message
    assert "Traceback" not in message
    assert WRONG_PASSWORD not in submitted.stdout + message
    with pytest.raises(BrokerUnavailableError, match="refused the credentials") as error:
        Client(settings=Settings(redis_url=url)).jobs()
    assert WRONG_PASSWORD not in str(error.value)


# --- workers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_fixture", "password", "reason"),
    [
        ("tls_redis", PASSWORD, "certificate was not verified"),  # the URL names no CA
        ("acl_redis", WRONG_PASSWORD, "refused the credentials"),
    ],
    ids=["untrusted-certificate", "wrong-password"],
)
def test_a_worker_that_cannot_log_in_exits_at_once_and_says_why_without_the_password(
    server_fixture: str,
    password: str,
    reason: str,
    request: pytest.FixtureRequest,
    start_worker: StartWorker,
) -> None:
    server: SecuredRedis = request.getfixturevalue(server_fixture)
    url = server.url(f"genq:{password}")
    worker = start_worker(redis_url=url, engine="null", wait=False)
    # Retrying forever would look alive and take no work: it stops, before loading a model.
    assert worker.process.wait(timeout=60) == EXIT_FAILED
    output = worker.output()
    assert reason in output
    assert "Traceback" not in output
    assert "ready: engine=" not in output
    assert password not in output
