"""Connecting to Redis: URL mistakes found in the text, and each server-side failure explained
(a database it lacks, a server that is not Redis, an outage) without the password."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from conftest import RedisProcess, free_port, listening

from genq.connection import connect
from genq.errors import BrokerUnavailableError, ConfigError, RedisAccessError, RedisUrlError
from genq.producer.client import Client
from genq.redis_diagnosis import explain_redis_error
from genq.settings import Settings

SECRET = "s3cr3t-pw"


def first_error(url: str) -> BrokerUnavailableError:
    """What the first command through genq's client says for ``url``."""
    with pytest.raises(BrokerUnavailableError) as e:
        Client(settings=Settings(redis_url=url)).jobs()
    return e.value


# --- the URL's text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"redis://:{SECRET}#1@127.0.0.1:6379/0", "password in GENQ_REDIS_URL"),
        (f"redis://:{SECRET}#1@127.0.0.1:6379/0", "# as %23"),
        (f"redis://:{SECRET}/1@127.0.0.1:6379/0", "/ as %2F"),
        (f"redis://:{SECRET}?1@127.0.0.1:6379/0", "? as %3F"),
        (f"redis://genq:{SECRET}@1@127.0.0.1:6379/0", "@ as %40"),
        (f"redis://genq:{SECRET}%zz@127.0.0.1:6379/0", "% as %25"),
        (f"redis://genq:{SECRET}%2@127.0.0.1/0", "% as %25"),
        (f"redis://genq:{SECRET}#a/b?c@127.0.0.1/0", "# as %23, / as %2F, ? as %3F"),
        (f"redis://ge#nq:{SECRET}@127.0.0.1/0", "user name in GENQ_REDIS_URL"),
        ("http://127.0.0.1:6379/0", "invalid Redis URL"),
        ("localhost:6379", "invalid Redis URL"),
        ("redis://127.0.0.1:6379/zero", "/zero, which is not a database number"),
        ("redis://127.0.0.1:6379/-1", "not a database number"),
        ("redis://127.0.0.1:6379/0#x", "holds a #, which ends a URL"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0?bogus=1", "option redis does not know: 'bogus'"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "it is not a TLS URL"),
    ],
)
def test_a_url_that_cannot_mean_what_was_meant_is_refused_before_connecting(
    url: str, message: str
) -> None:
    with pytest.raises(RedisUrlError) as e:
        connect(url)
    assert isinstance(e.value, ConfigError)
    text = str(e.value)
    assert message in text
    assert "\n" not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{quote(SECRET + '#/?@%', safe='')}@127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://[::1]:6379/3",
        "redis://127.0.0.1:6379/0?socket_timeout=5",
        "redis://127.0.0.1:6379/0?db=2",
        "rediss://genq:pw@127.0.0.1:6380/0?ssl_ca_certs=/etc/ca@corp/ca.pem",
        "unix:///tmp/redis.sock?db=1",
    ],
)
def test_well_formed_urls_are_accepted(url: str) -> None:
    connect(url).close()  # connects nothing yet


def test_a_percent_encoded_password_logs_in(redis_server: RedisProcess) -> None:
    password = "p#ss/w?rd@x%y:z"
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser(
        "genq-encoded", enabled=True, passwords=[f"+{password}"], commands=["+@all"], keys=["*"]
    )
    try:
        url = f"redis://genq-encoded:{quote(password, safe='')}@127.0.0.1:{redis_server.port}/0"
        assert connect(url).ping()
        with pytest.raises(RedisUrlError, match="# as %23"):
            connect(url.replace(quote(password, safe=""), password))
    finally:
        admin.acl_deluser("genq-encoded")


def test_wrong_credentials_say_to_percent_encode_and_hide_the_password(
    redis_server: RedisProcess,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser("genq-creds", enabled=True, passwords=["+right"], commands=["+@all"])
    try:
        error = first_error(f"redis://genq-creds:{SECRET}@127.0.0.1:{redis_server.port}/0")
        assert isinstance(error, RedisAccessError)
        assert "refused the credentials" in str(error)
        assert "must be percent-encoded, e.g. # as %23" in str(error)
        assert SECRET not in str(error)
    finally:
        admin.acl_deluser("genq-creds")


# --- a database the server does not have --------------------------------------------------------


def test_a_database_out_of_range_says_how_many_there_are(redis_server: RedisProcess) -> None:
    count = int(redis.Redis.from_url(redis_server.url).config_get("databases")["databases"])
    error = first_error(f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/99")
    assert isinstance(error, RedisAccessError)
    text = str(error)
    assert f"has no database 99: it has {count} (0 to {count - 1})" in text
    assert "Change the /99 at the end of GENQ_REDIS_URL" in text
    assert SECRET not in text
    assert "\n" not in text


def test_a_database_given_as_a_query_option_names_that_option(redis_server: RedisProcess) -> None:
    error = first_error(f"redis://127.0.0.1:{redis_server.port}/0?db=4096")
    assert isinstance(error, RedisAccessError)
    assert "has no database 4096" in str(error)
    assert "Change the db=4096 in GENQ_REDIS_URL" in str(error)


def test_a_user_denied_config_still_gets_a_clear_database_message(
    redis_server: RedisProcess,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser(
        "genq-noconfig", enabled=True, passwords=["+pw"], commands=["+@all", "-config"], keys=["*"]
    )
    try:
        error = first_error(f"redis://genq-noconfig:pw@127.0.0.1:{redis_server.port}/99")
        assert isinstance(error, RedisAccessError)
        assert "has no database 99 (the server's `databases` setting, 16 by default" in str(error)
        assert "such as 0" in str(error)
    finally:
        admin.acl_deluser("genq-noconfig")


# --- servers that are not Redis ----------------------------------------------------------------


class Server:
    """A throwaway TCP server on a free loopback port; ``handle`` gets each connection."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.handle = handle
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self.handle(conn)

    def close(self) -> None:
        self.sock.close()


def close_at_once(conn: socket.socket) -> None:
    conn.close()


def send_garbage(conn: socket.socket) -> None:
    conn.sendall(b"hello, this is not redis\r\n")


def test_an_http_server_is_said_not_to_be_redis(http_server: int) -> None:
    error = first_error(f"redis://:{SECRET}@127.0.0.1:{http_server}/0")
    assert isinstance(error, RedisAccessError)
    text = str(error)
    assert f"the server at 127.0.0.1:{http_server} answered like an HTTP server" in text
    assert "it is not a Redis server. Check the host and port in GENQ_REDIS_URL" in text
    assert "is it running" not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("handle", "message"),
    [
        (close_at_once, "accepted the connection but closed it without a Redis reply"),
        (send_garbage, "answered in a protocol other than Redis's"),
    ],
    ids=["closes-at-once", "answers-garbage"],
)
def test_a_tcp_server_that_is_not_redis_is_named(
    handle: Callable[[socket.socket], None], message: str
) -> None:
    server = Server(handle)
    try:
        error = first_error(f"redis://127.0.0.1:{server.port}/0")
        assert isinstance(error, RedisAccessError)
        assert f"the server at 127.0.0.1:{server.port} {message}" in str(error)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("port", "what"), [(5432, "PostgreSQL"), (5672, "RabbitMQ")], ids=["postgres", "rabbitmq"]
)
def test_a_local_database_or_broker_port_is_said_not_to_be_redis(port: int, what: str) -> None:
    if not listening(port):
        pytest.skip(f"nothing listens on {port} ({what}) here")
    error = first_error(f"redis://:{SECRET}@127.0.0.1:{port}/0")
    assert isinstance(error, RedisAccessError)
    assert f"the server at 127.0.0.1:{port}" in str(error)
    assert "it is not a Redis server" in str(error)
    assert SECRET not in str(error)


def test_nothing_listening_is_an_outage_to_retry_not_a_refusal() -> None:
    port = free_port()
    error = first_error(f"redis://:{SECRET}@127.0.0.1:{port}/0")
    assert not isinstance(error, RedisAccessError)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0: is it running?" in str(error)


def test_a_redis_that_dies_and_comes_back_is_an_outage_not_a_non_redis(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        client = connect(server.url)
        assert client.ping()
        server.stop()  # SIGKILL: the open connection is closed under the client
        with pytest.raises(redis.exceptions.ConnectionError) as e:
            client.ping()
        problem = explain_redis_error(e.value, server.url)
        assert type(problem) is BrokerUnavailableError
        server.start()
        assert client.ping()
    finally:
        server.stop()


def test_a_redis_that_answers_is_told_apart_from_one_that_does_not(
    redis_server: RedisProcess,
) -> None:
    # A connection dropped under a live Redis: the server still answers PING like Redis.
    dropped = redis.exceptions.ConnectionError("Connection closed by server.")
    problem = explain_redis_error(dropped, redis_server.url)
    assert type(problem) is BrokerUnavailableError
    started = time.monotonic()
    server = Server(close_at_once)
    try:
        problem = explain_redis_error(dropped, f"redis://127.0.0.1:{server.port}/0")
        assert isinstance(problem, RedisAccessError)
    finally:
        server.close()
    assert time.monotonic() - started < 5
