"""Connecting to Redis, and explaining to users why a connection failed (no secrets shown)."""

from __future__ import annotations

import re
import socket
import ssl
import time
from typing import Any

import redis
import redis.connection

from genq.errors import BrokerUnavailableError, GenqError, RedisAccessError, RedisUrlError
from genq.settings import REDIS_SOCKET_TIMEOUT_S, redact_url


def explain_redis_error(error: redis.exceptions.RedisError, redis_url: str) -> GenqError | None:
    """The error to show a user for ``error`` (what went wrong, what to do, no password), or
    None when it is not about reaching Redis. :class:`RedisAccessError` when it is permanent:
    wrong credentials, an unverified certificate, a database the server does not have, or a
    server that is not Redis at all.

    A dropped connection is looked into (:func:`_probe`): a server that answers a PING like
    Redis, or nothing listening, is an outage (:class:`BrokerUnavailableError`, worth
    retrying); a server that answers in another protocol, or closes without a word, is not
    Redis and never will be."""
    url = redact_url(redis_url)
    text = str(error)
    if isinstance(error, redis.exceptions.AuthenticationError) or (
        isinstance(error, redis.exceptions.ResponseError)
        and ("auth" in text.lower() or "NOPERM" in text)
    ):
        return RedisAccessError(
            f"Redis at {url} refused the credentials; check the user and password in "
            "GENQ_REDIS_URL (characters such as # ? / @ % in them must be percent-encoded, "
            "e.g. # as %23)"
        )
    if isinstance(error, redis.exceptions.ResponseError) and "db index" in text.lower():
        return RedisAccessError(_no_such_database(redis_url))
    if isinstance(error, redis.exceptions.ResponseError) and "cluster mode" in text.lower():
        return RedisAccessError(
            f"Redis at {url} is a cluster, which has database 0 only: end GENQ_REDIS_URL with /0"
        )
    if isinstance(error, redis.exceptions.ResponseError) and text.startswith("DENIED"):
        return RedisAccessError(
            f"Redis at {url} refuses clients from other hosts (protected mode: no password is "
            "set); give it a password (requirepass) and put it in GENQ_REDIS_URL"
        )
    if isinstance(error, redis.exceptions.InvalidResponse):
        return RedisAccessError(_not_redis(redis_url, "answered in a protocol other than Redis's"))
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        tls_error = _tls_error(error)
        if tls_error is not None:
            return RedisAccessError(
                f"TLS connection to Redis at {url} failed: {tls_error}. To trust a private CA, "
                "add ssl_ca_certs=/path/to/ca.pem (PEM) to GENQ_REDIS_URL."
            )
        if not isinstance(error, redis.exceptions.TimeoutError):
            answer = _probe(redis_url)
            if answer is not None:
                return RedisAccessError(_not_redis(redis_url, answer))
        elif redis_url.lower().startswith("rediss:") and "handshake" in _causes(error):
            # A plain Redis waits for a command and never answers a TLS hello; but a slow
            # network can time a real handshake out too, so this one is worth retrying.
            return BrokerUnavailableError(
                f"the TLS handshake with Redis at {url} timed out: does the server speak TLS "
                "on this port? For a Redis without TLS, begin GENQ_REDIS_URL with redis://"
            )
        return BrokerUnavailableError(
            f"cannot reach Redis at {url}: is it running? Set GENQ_REDIS_URL (or --redis-url) "
            "to the server genq should use."
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
    options = _url_options(redis_url)
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


def _url_options(redis_url: str) -> dict[str, Any]:
    """The connection options in ``redis_url`` as redis-py reads them ({} if it cannot)."""
    try:
        options: dict[str, Any] = redis.connection.parse_url(redis_url)  # type: ignore[no-untyped-call]
    except ValueError:
        return {}
    return options


def _address(options: dict[str, Any]) -> str | tuple[str, int]:
    if options.get("path"):
        return str(options["path"])
    return str(options.get("host") or "localhost"), int(options.get("port") or 6379)


def _not_redis(redis_url: str, what: str) -> str:
    """Why the server at ``redis_url`` is not Redis, and what to do."""
    address = _address(_url_options(redis_url))
    where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    return (
        f"the server at {where} {what}: it is not a Redis server. Check the host and port in "
        f"GENQ_REDIS_URL ({redact_url(redis_url)}); Redis listens on 6379 unless configured "
        "otherwise, and a TLS-only port needs rediss://"
    )


def _no_such_database(redis_url: str) -> str:
    """What to say when the server has no database of the URL's number: how many it has when
    it tells (CONFIG GET may be denied), and which part of the URL to change."""
    url = redact_url(redis_url)
    options = _url_options(redis_url)
    db = options.get("db", 0)
    where = f"db={db} in" if "db=" in redis_url.partition("?")[2] else f"/{db} at the end of"
    count = _database_count(options)
    if count is None:
        return (
            f"Redis at {url} has no database {db} (the server's `databases` setting, 16 by "
            f"default, sets how many there are, numbered from 0). Change the {where} "
            "GENQ_REDIS_URL to an existing database, such as 0"
        )
    return (
        f"Redis at {url} has no database {db}: it has {count} (0 to {count - 1}). Change the "
        f"{where} GENQ_REDIS_URL to a number from 0 to {count - 1}, or raise `databases` in "
        "the server's configuration"
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


def check_redis_url(redis_url: str) -> None:
    """Refuse a Redis URL whose text cannot mean what its writer meant: an unknown scheme, a
    user name or password with characters that must be percent-encoded (a URL parser would cut
    the URL there, and could connect to another host with part of the password), or a database
    that is not a number. Raises :class:`RedisUrlError`; the password is never shown."""
    url = redact_url(redis_url)
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme.lower() not in {"redis", "rediss", "unix"}:
        raise RedisUrlError(
            f"invalid Redis URL {url!r}: expected redis://[user:password@]host:port/db "
            "(or rediss:// for TLS)"
        )
    credentials, host = _split_credentials(rest)
    if credentials is not None:
        user, _, password = credentials.partition(":")
        for part, text in (("user name", user), ("password", password)):
            bad = _unencoded(text)
            if bad:
                raise RedisUrlError(
                    f"the {part} in GENQ_REDIS_URL ({url}) holds characters that must be "
                    f"percent-encoded in a URL: write {', '.join(bad)} (in Python: "
                    "urllib.parse.quote(text, safe=''))"
                )
    if "#" in host:
        raise RedisUrlError(
            f"GENQ_REDIS_URL ({url}) holds a #, which ends a URL: if it is part of the "
            "password, percent-encode it as %23"
        )
    if scheme.lower() != "unix":
        path = host.partition("?")[0].partition("/")[2].rstrip("/")
        if path and not (path.isascii() and path.isdigit()):
            raise RedisUrlError(
                f"GENQ_REDIS_URL ({url}) ends in /{path[:20]}, which is not a database number: "
                "end it with /0 (or another database)"
            )


# What follows the credentials in a URL as it should be: host[:port][/db][?query].
_AFTER_CREDENTIALS = re.compile(r"(\[[^\]/?#@]*\]|[^/?#@\[\]:]*)(:\d*)?(/\d*)?(\?[^#]*)?")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODINGS = {"#": "%23", "?": "%3F", "/": "%2F", "@": "%40", "%": "%25"}


def _split_credentials(rest: str) -> tuple[str | None, str]:
    """``rest`` (the URL after ``scheme://``) as (user:password or None, the rest), read as
    its writer meant it even where a URL parser would not: a password holding / ? or # ends
    the URL's host part early, so the @ that ends the credentials comes after it."""
    host_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, host_end)
    if at >= 0:
        return rest[:at], rest[at + 1 :]
    if "@" not in rest or _AFTER_CREDENTIALS.fullmatch(rest):
        return None, rest  # no credentials (an @ in the query, a file path, is its own)
    for at in sorted((i for i, c in enumerate(rest) if c == "@"), reverse=True):
        if _AFTER_CREDENTIALS.fullmatch(rest, at + 1):
            return rest[:at], rest[at + 1 :]
    return rest[: rest.rfind("@")], rest[rest.rfind("@") + 1 :]


def _unencoded(text: str) -> list[str]:
    """How to write each character of ``text`` that a URL's user name or password must have
    percent-encoded ("# as %23"), in the order they first appear; [] if none."""
    found: list[str] = []
    for position, char in enumerate(text):
        if char == "%" and not _BAD_PERCENT.match(text, position):
            continue
        if char in _ENCODINGS and f"{char} as {_ENCODINGS[char]}" not in found:
            found.append(f"{char} as {_ENCODINGS[char]}")
    return found


def connect(redis_url: str) -> redis.Redis:
    """Open a Redis client for ``redis_url`` (decoded responses, retries on transient errors).

    The URL's text is checked first (:func:`check_redis_url`); what the server says comes with
    the first command, and :func:`explain_redis_error` explains it."""
    return _open(redis_url, decode_responses=True)


def connect_binary(redis_url: str) -> redis.Redis:
    """As :func:`connect`, for values that are bytes (API files: a chunk may end inside a
    UTF-8 sequence, and an upload need not be UTF-8 at all)."""
    return _open(redis_url, decode_responses=False)


def _open(redis_url: str, decode_responses: bool) -> redis.Redis:
    check_redis_url(redis_url)
    try:
        client = redis.Redis.from_url(
            redis_url,
            decode_responses=decode_responses,
            health_check_interval=30,
            socket_connect_timeout=5,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry_on_timeout=True,
            # TCP only: a Unix socket connection takes no keepalive option.
            **({} if redis_url.lower().startswith("unix:") else {"socket_keepalive": True}),
        )
    except ValueError:
        raise RedisUrlError(
            f"invalid Redis URL {redact_url(redis_url)!r}: "
            "expected redis://[user:password@]host:port/db (or rediss:// for TLS)"
        ) from None
    pool = client.connection_pool
    try:
        # Connects nothing; a ?name=value the connection does not know would otherwise fail as
        # a TypeError on the first command.
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as e:
        option = str(e).rpartition("argument ")[2].strip("'\"")[:40]
        if option.startswith("ssl"):
            raise RedisUrlError(
                f"GENQ_REDIS_URL ({redact_url(redis_url)}) has the TLS option {option!r}, but "
                "it is not a TLS URL: begin it with rediss:// (or remove the option)"
            ) from None
        raise RedisUrlError(
            f"GENQ_REDIS_URL ({redact_url(redis_url)}) has an option redis does not know: "
            f"{option!r}; remove it (options: ?ssl_ca_certs=..., ?socket_timeout=..., ...)"
        ) from None
    return client
