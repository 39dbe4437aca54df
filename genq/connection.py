"""Connecting to Redis, and explaining to users why a connection failed (no secrets shown)."""

from __future__ import annotations

import ssl

import redis

from genq.errors import BrokerUnavailableError, GenqError, RedisAccessError
from genq.settings import redact_url


def explain_redis_error(error: redis.exceptions.RedisError, redis_url: str) -> GenqError | None:
    """The error to show a user for ``error`` (what went wrong, what to do, no password), or
    None when it is not about reaching Redis. :class:`RedisAccessError` when it is permanent."""
    url = redact_url(redis_url)
    if isinstance(error, redis.exceptions.AuthenticationError) or (
        isinstance(error, redis.exceptions.ResponseError)
        and ("auth" in str(error).lower() or "NOPERM" in str(error))
    ):
        return RedisAccessError(
            f"Redis at {url} refused the credentials; check the user and password in GENQ_REDIS_URL"
        )
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        tls_error = _tls_error(error)
        if tls_error is not None:
            return RedisAccessError(
                f"TLS connection to Redis at {url} failed: {tls_error}. To trust a private CA, "
                "add ssl_ca_certs=/path/to/ca.pem (PEM) to GENQ_REDIS_URL."
            )
        return BrokerUnavailableError(
            f"cannot reach Redis at {url}: is it running? Set GENQ_REDIS_URL (or --redis-url) "
            "to the server genq should use."
        )
    return None


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


def connect(redis_url: str) -> redis.Redis:
    """Open a Redis client for ``redis_url`` (decoded responses, retries on transient errors)."""
    try:
        return redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            health_check_interval=30,
            socket_connect_timeout=5,
            socket_keepalive=True,
            retry_on_timeout=True,
        )
    except ValueError:
        raise BrokerUnavailableError(
            f"invalid Redis URL {redact_url(redis_url)!r}: "
            "expected redis://[user:password@]host:port/db (or rediss:// for TLS)"
        ) from None
