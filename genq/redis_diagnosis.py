"""Explaining to users why Redis could not be used (what went wrong, what to do, no secrets
shown): :func:`explain_redis_error` turns a redis-py error into genq's, probing the server
behind a dropped connection (a PING of its own) or a Sentinel URL's Sentinels to tell an
outage from a server that is not Redis, a database it lacks, or a master it does not know."""

from __future__ import annotations

import re
import socket
import ssl
import time
from typing import Any

import redis
import redis.sentinel

from genq.errors import BrokerUnavailableError, GenqError, RedisAccessError
from genq.redis_urls import url_options
from genq.sentinel import is_sentinel_url, parse_sentinel_url
from genq.settings import redact_url


def explain_redis_error(
    error: redis.exceptions.RedisError, redis_url: str, setting: str = "GENQ_REDIS_URL"
) -> GenqError | None:
    """The error to show a user for ``error`` (what went wrong, what to do, no password), or
    None when it is not about reaching Redis. :class:`RedisAccessError` when it is permanent:
    wrong credentials, an unverified certificate, a database the server does not have, or a
    server that is not Redis at all. Messages name ``setting``, the variable that holds
    ``redis_url`` (GENQ_REDIS_URL, the broker; GENQ_RESULTS_URL, the results store).

    A dropped connection is looked into (:func:`_probe`): a server that answers a PING like
    Redis, or nothing listening, is an outage (:class:`BrokerUnavailableError`, worth
    retrying); a server that answers in another protocol, or closes without a word, is not
    Redis and never will be."""
    url = redact_url(redis_url)
    text = str(error)
    if isinstance(error, redis.sentinel.MasterNotFoundError) and is_sentinel_url(redis_url):
        return _no_primary(redis_url, setting)
    sentinel = is_sentinel_url(redis_url)
    if isinstance(error, redis.exceptions.AuthenticationError) or (
        isinstance(error, redis.exceptions.ResponseError)
        and ("auth" in text.lower() or "NOPERM" in text)
    ):
        return RedisAccessError(
            f"Redis at {url} refused the credentials; check the user and password in "
            f"{setting} (characters such as # ? / @ % in them must be percent-encoded, "
            "e.g. # as %23)"
            + (
                "; the URL's user:password log in to the primary, sentinel_password= (and "
                "sentinel_username=) to the Sentinels"
                if sentinel
                else ""
            )
        )
    if sentinel and isinstance(error, redis.exceptions.ResponseError) and "SENTINEL" in text:
        # redis-py asks the Sentinels for the primary with SENTINEL MASTERS
        return RedisAccessError(
            f"a server of {setting} ({url}) is not a Redis Sentinel (it answered: "
            f"{text[:80]}); the hosts of a sentinel:// URL are the Sentinels' (port 26379 by "
            "default), not the Redis servers'"
        )
    if isinstance(error, redis.exceptions.ResponseError) and "db index" in text.lower():
        return RedisAccessError(_no_such_database(redis_url, setting))
    if isinstance(error, redis.exceptions.ResponseError) and "cluster mode" in text.lower():
        return RedisAccessError(
            f"Redis at {url} is a cluster, which has database 0 only: end {setting} with /0"
        )
    if isinstance(error, redis.exceptions.ResponseError) and text.startswith("DENIED"):
        return RedisAccessError(
            f"Redis at {url} refuses clients from other hosts (protected mode: no password is "
            f"set); give it a password (requirepass) and put it in {setting}"
        )
    if isinstance(error, redis.exceptions.InvalidResponse):
        # What it answered instead (an HTTP server, say) makes a better message; hiredis, the
        # C parser, raises this where the Python one drops the connection.
        instead = _probe(redis_url) or "answered in a protocol other than Redis's"
        return RedisAccessError(_not_redis(redis_url, instead, setting))
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        tls_error = _tls_error(error)
        if tls_error is not None:
            return RedisAccessError(
                f"TLS connection to Redis at {url} failed: {tls_error}. To trust a private CA, "
                f"add ssl_ca_certs=/path/to/ca.pem (PEM) to {setting}."
            )
        if not isinstance(error, redis.exceptions.TimeoutError):
            answer = _probe(redis_url)
            if answer is not None:
                return RedisAccessError(_not_redis(redis_url, answer, setting))
        elif redis_url.lower().startswith("rediss:") and "handshake" in _causes(error):
            # A plain Redis waits for a command and never answers a TLS hello; but a slow
            # network can time a real handshake out too, so this one is worth retrying.
            return BrokerUnavailableError(
                f"the TLS handshake with Redis at {url} timed out: does the server speak TLS "
                f"on this port? For a Redis without TLS, begin {setting} with redis://"
            )
        if sentinel:
            return BrokerUnavailableError(
                f"cannot reach the primary that {parse_sentinel_url(redis_url).where} name "
                f"({setting}: {url}): if it just failed, they promote a replica within their "
                "down-after-milliseconds and failover time; genq keeps asking them"
            )
        return BrokerUnavailableError(
            f"cannot reach Redis at {url}: is it running? Set {setting}"
            f"{' (or --redis-url)' if setting == 'GENQ_REDIS_URL' else ''} to the server genq "
            "should use."
        )
    return None


PROBE_TIMEOUT_S = 2.0
_PING = b"*1\r\n$4\r\nPING\r\n"
# The start of any RESP reply (RESP2 and RESP3 types) up to its first line end.
_RESP_REPLY = re.compile(rb"[-+:$*_,#!=(%~>|][\x20-\x7e]*\r\n")
_LOOKS_LIKE = {
    b"HTTP/": "like an HTTP server",
    b"<!DOCTYPE": "like an HTTP server",
    b"<html": "like an HTTP server",
    b"AMQP": "like an AMQP broker (RabbitMQ?)",
    b"INFO {": "like a NATS server",
    b"SSH-": "like an SSH server",
}


def _probe(redis_url: str) -> str | None:
    """How the server behind a dropped connection answers a PING of its own: None when it
    answers like Redis, cannot be reached, or says nothing in time (an outage, or too little to
    tell); else what it did instead, for a message. Plain connections only: a TLS server's
    failures are TLS errors."""
    options = url_options(redis_url)
    if not options or redis_url.lower().startswith("rediss:"):
        return None
    for attempt in range(2):
        reply = _ping(_address(options))
        if reply is None or _RESP_REPLY.match(reply):
            return None
        if reply:
            kind = next((v for k, v in _LOOKS_LIKE.items() if reply.startswith(k)), None)
            if kind:
                return f"answered {kind}, not in the Redis protocol"
            return "answered in a protocol other than Redis's"
        if attempt == 0:
            # Closed without a word: a Redis restarting at that very moment could do it once.
            time.sleep(0.3)
    return "accepted the connection but closed it without a Redis reply"


def _ping(address: str | tuple[str, int]) -> bytes | None:
    """The server's first bytes after a PING (b"" if it closed the connection first), or None
    when nothing could connect or nothing came back in time."""
    try:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect(address)
        else:
            sock = socket.create_connection(address, timeout=PROBE_TIMEOUT_S)
    except OSError:
        return None
    reply = b""
    with sock:
        try:
            sock.sendall(_PING)
            while b"\r\n" not in reply and len(reply) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            return reply or None
        except OSError:
            pass  # reset after (or instead of) an answer: what came before it still counts
    return reply


def _address(options: dict[str, Any]) -> str | tuple[str, int]:
    if options.get("path"):
        return str(options["path"])
    return str(options.get("host") or "localhost"), int(options.get("port") or 6379)


def _not_redis(redis_url: str, what: str, setting: str = "GENQ_REDIS_URL") -> str:
    """Why the server at ``redis_url`` is not Redis, and what to do."""
    address = _address(url_options(redis_url))
    where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    return (
        f"the server at {where} {what}: it is not a Redis server. Check the host and port in "
        f"{setting} ({redact_url(redis_url)}); Redis listens on 6379 unless configured "
        "otherwise, and a TLS-only port needs rediss://"
    )


def _no_such_database(redis_url: str, setting: str = "GENQ_REDIS_URL") -> str:
    """What to say when the server has no database of the URL's number: how many it has when
    it tells (CONFIG GET may be denied), and which part of the URL to change."""
    url = redact_url(redis_url)
    if is_sentinel_url(redis_url):
        db = parse_sentinel_url(redis_url, setting).db
        return (
            f"Redis at {url} has no database {db} (the server's `databases` setting, 16 by "
            f"default, sets how many there are, numbered from 0). Change the /{db} at the end "
            f"of {setting} to an existing database, such as 0"
        )
    options = url_options(redis_url)
    db = options.get("db", 0)
    where = f"db={db} in" if "db=" in redis_url.partition("?")[2] else f"/{db} at the end of"
    count = _database_count(options)
    if count is None:
        return (
            f"Redis at {url} has no database {db} (the server's `databases` setting, 16 by "
            f"default, sets how many there are, numbered from 0). Change the {where} "
            f"{setting} to an existing database, such as 0"
        )
    return (
        f"Redis at {url} has no database {db}: it has {count} (0 to {count - 1}). Change the "
        f"{where} {setting} to a number from 0 to {count - 1}, or raise `databases` in "
        "the server's configuration"
    )


def _no_primary(redis_url: str, setting: str) -> GenqError:
    """Why the Sentinels of ``redis_url`` named no primary: none of them answers (an outage),
    they answer but monitor no master of that name (a configuration to fix), or they know it
    and have no healthy primary for it now (a failover under way: worth waiting out)."""
    parsed = parse_sentinel_url(redis_url, setting)
    url = redact_url(redis_url)
    names: set[str] | None = None
    for host, port in parsed.sentinels:
        probe = redis.Redis(
            host=host,
            port=port,
            decode_responses=True,
            socket_timeout=PROBE_TIMEOUT_S,
            socket_connect_timeout=PROBE_TIMEOUT_S,
            **parsed.sentinel_kwargs(),
        )
        try:
            masters = probe.sentinel_masters()
            names = set(masters) if isinstance(masters, dict) else set()
            break
        except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError) as e:
            login = isinstance(e, redis.exceptions.AuthenticationError)
            if login or "auth" in str(e).lower() or "NOPERM" in str(e) or "WRONGPASS" in str(e):
                return RedisAccessError(
                    f"the Sentinel at {host}:{port} refused genq's login; set "
                    f"sentinel_password= (and sentinel_username=) in {setting} ({url})"
                )
            return RedisAccessError(
                f"the server at {host}:{port} is not a Redis Sentinel ({e}); the hosts of a "
                f"sentinel:// URL are the Sentinels' ({setting}: {url})"
            )
        except redis.exceptions.RedisError as e:
            tls_error = _tls_error(e)
            if tls_error is not None:
                return RedisAccessError(
                    f"TLS connection to the Sentinel at {host}:{port} failed: {tls_error}. To "
                    f"trust a private CA, add ssl_ca_certs=/path/to/ca.pem (PEM) to {setting} "
                    f"({url})"
                )
            continue
        finally:
            probe.close()
    if names is None:
        return BrokerUnavailableError(
            f"cannot reach any of {parsed.where}: are they running? Set {setting} ({url}) to "
            "the Sentinels genq should ask"
        )
    if parsed.master_name not in names:
        known = ", ".join(sorted(names)) or "none"
        return RedisAccessError(
            f"{parsed.where} monitor no master named {parsed.master_name!r} (they monitor: "
            f"{known}); change the name in {setting} ({url})"
        )
    return BrokerUnavailableError(
        f"{parsed.where} know no healthy primary now (a failover under way?); genq keeps "
        f"asking ({setting}: {url})"
    )


def _database_count(options: dict[str, Any]) -> int | None:
    """The server's `databases` setting, asked in database 0; None if it is not told."""
    pool = redis.ConnectionPool(
        **{
            **options,
            "db": 0,
            "decode_responses": True,
            "socket_timeout": PROBE_TIMEOUT_S,
            "socket_connect_timeout": PROBE_TIMEOUT_S,
        }
    )
    try:
        reply = redis.Redis(connection_pool=pool).config_get("databases")
        return int(str(reply["databases"]))
    except (redis.exceptions.RedisError, KeyError, TypeError, ValueError):
        return None
    finally:
        pool.disconnect()


def _causes(error: BaseException) -> str:
    """The messages of ``error`` and of every exception behind it, in one string."""
    texts: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(texts) < 20:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " | ".join(texts)


def _tls_error(error: BaseException) -> str | None:
    """What went wrong in the TLS handshake behind a connection error, or None if nothing did."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate was not verified ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error {cause.reason or cause}"
        cause = cause.__cause__ or cause.__context__
    return None
