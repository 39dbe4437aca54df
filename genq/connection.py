"""Connecting to genq's Redis servers: clients for a URL (:func:`connect`, checked first by
:func:`genq.redis_urls.check_redis_url`; through its Sentinels for a ``sentinel://`` URL), and
the two :class:`Endpoint` s, the broker's and the results store's, with whether they are
split. Why a connection failed is explained by :mod:`genq.redis_diagnosis`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from genq.errors import GenqError, RedisUrlError
from genq.redis_diagnosis import explain_redis_error
from genq.redis_urls import check_redis_url, url_options
from genq.sentinel import is_sentinel_url, master_client, parse_sentinel_url
from genq.settings import REDIS_SOCKET_TIMEOUT_S, Settings, redact_url


def connect(redis_url: str, setting: str = "GENQ_REDIS_URL") -> redis.Redis:
    """Open a Redis client for ``redis_url`` (decoded responses, retries on transient errors);
    through its Sentinels for a ``sentinel://`` URL.

    The URL's text is checked first (:func:`check_redis_url`, its errors naming ``setting``);
    what the server says comes with the first command, and :func:`explain_redis_error`
    explains it."""
    return _open(redis_url, setting, decode_responses=True)


def connect_binary(redis_url: str, setting: str = "GENQ_REDIS_URL") -> redis.Redis:
    """As :func:`connect`, for values that are bytes (API files: a chunk may end inside a
    UTF-8 sequence, and an upload need not be UTF-8 at all)."""
    return _open(redis_url, setting, decode_responses=False)


def _open(redis_url: str, setting: str, decode_responses: bool) -> redis.Redis:
    check_redis_url(redis_url, setting)
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "retry_on_timeout": True,
    }
    if is_sentinel_url(redis_url):
        return master_client(redis_url, setting, socket_keepalive=True, **options)
    try:
        client = redis.Redis.from_url(
            redis_url,
            **options,
            # TCP only: a Unix socket connection takes no keepalive option.
            **({} if redis_url.lower().startswith("unix:") else {"socket_keepalive": True}),
        )
    except ValueError:
        raise RedisUrlError(
            f"invalid Redis URL {redact_url(redis_url)!r} in {setting}: "
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
                f"{setting} ({redact_url(redis_url)}) has the TLS option {option!r}, but "
                "it is not a TLS URL: begin it with rediss:// (or remove the option)"
            ) from None
        raise RedisUrlError(
            f"{setting} ({redact_url(redis_url)}) has an option redis does not know: "
            f"{option!r}; remove it (options: ?ssl_ca_certs=..., ?socket_timeout=..., ...)"
        ) from None
    return client


@dataclass(frozen=True)
class Endpoint:
    """One of genq's two Redis servers, as configured: its URL and the variable it came from
    (for messages: which of the two failed)."""

    url: str
    setting: str  # GENQ_REDIS_URL or GENQ_RESULTS_URL

    def connect(self) -> redis.Redis:
        return connect(self.url, self.setting)

    def connect_binary(self) -> redis.Redis:
        return connect_binary(self.url, self.setting)

    def explain(self, error: redis.exceptions.RedisError) -> GenqError | None:
        return explain_redis_error(error, self.url, self.setting)

    @property
    def shown(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)


def broker_endpoint(settings: Settings) -> Endpoint:
    """The broker's Redis (GENQ_REDIS_URL): the Celery queue, kombu's leases, the fair
    feeder's pending lists, dead letters; tenants' weights too when the stores are split."""
    return Endpoint(settings.redis_url, "GENQ_REDIS_URL")


def results_endpoint(settings: Settings) -> Endpoint:
    """Where jobs live (GENQ_RESULTS_URL; GENQ_REDIS_URL when it is unset): job records,
    results, attempts, tenants' unfinished jobs and policies, worker records, the webhook
    outbox, the API's files and batches."""
    if stores_split(settings):
        return Endpoint(str(settings.results_url), "GENQ_RESULTS_URL")
    return broker_endpoint(settings)


def stores_split(settings: Settings) -> bool:
    """Whether the results store is another Redis than the broker's (GENQ_RESULTS_URL set to
    another server or database): then nothing on the broker's side may read a job's record."""
    if not settings.results_url:
        return False
    return _server_of(settings.results_url) != _server_of(settings.redis_url)


def _server_of(redis_url: str) -> tuple[Any, ...]:
    """What names a Redis database in ``redis_url``: ``redis://h:6379`` and
    ``redis://h:6379/0`` are one (credentials and options aside)."""
    if is_sentinel_url(redis_url):
        try:
            parsed = parse_sentinel_url(redis_url)
        except RedisUrlError:
            return (redis_url,)
        return ("sentinel", tuple(sorted(parsed.sentinels)), parsed.master_name, parsed.db)
    options = url_options(redis_url)
    if not options:
        return (redis_url,)
    return (
        options.get("host", "localhost"),
        int(options.get("port", 6379)),
        int(options.get("db", 0)),
        options.get("path"),
    )
