"""Redis Sentinel URLs: one syntax for GENQ_REDIS_URL (the broker, through kombu's Sentinel
transport) and GENQ_RESULTS_URL (the results store, through redis-py's Sentinel)::

    sentinel://[user:password@]host[:port][,host[:port]...]/master_name[/db][?option=value&...]

The hosts are the Sentinels (port 26379 unless given), ``master_name`` the name they monitor
the primary under (``sentinel monitor master_name ...``), ``db`` the database (0). The user
name and password are the primary's (and its replicas'), as in a ``redis://`` URL; options:

* ``sentinel_username``, ``sentinel_password``: for Sentinels that require a login of their
  own (``requirepass`` in sentinel.conf); without them, genq connects to the Sentinels without
  one;
* ``ssl=true``: TLS to the Sentinels and the primary, verifying their certificates;
  ``ssl_ca_certs=/path/ca.pem`` (a private CA), ``ssl_certfile``/``ssl_keyfile`` (a client
  certificate) as for ``rediss://``.

Every client asks the Sentinels for the primary when it connects, and again after a failover
(a dropped connection, or a READONLY reply from a demoted primary). kombu's own syntax
(``sentinel://h1:26379;sentinel://h2:26379`` plus a ``master_name`` transport option) is
built from this one (:func:`kombu_broker`); it is refused as GENQ_REDIS_URL with the form to
write instead, so that one URL means the same thing on both sides.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from genq.errors import RedisUrlError
from genq.settings import redact_url

SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
FORM = "sentinel://[user:password@]host:port[,host:port...]/master_name[/db]"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_OPTIONS = (
    "sentinel_username",
    "sentinel_password",
    "ssl",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
)
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?")
_MASTER = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


SENTINEL_TIMEOUT_S = 2.0  # a Sentinel that says nothing this long is skipped for the next


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SCHEME


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL (see the module doc)."""

    sentinels: list[tuple[str, int]]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_options: dict[str, str] = field(default_factory=dict)  # ssl_ca_certs, ...
    raw_credentials: str | None = field(default=None, repr=False)  # as written (encoded)

    @property
    def where(self) -> str:
        """The Sentinels and the master name, for messages (no credentials)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"the Sentinels at {hosts} (master {self.master_name!r})"

    def tls_options(self) -> dict[str, Any]:
        """redis-py's TLS arguments for the primary and the Sentinels (empty without TLS)."""
        if not self.ssl:
            return {}
        return {"ssl": True, "ssl_cert_reqs": "required", **self.ssl_options}

    def sentinel_kwargs(self, **socket_options: Any) -> dict[str, Any]:
        """Connection arguments for the Sentinels themselves. One quick retry each: the next
        Sentinel is the retry that counts (redis-py's default backs off for seconds per
        Sentinel, even on a refused login)."""
        options: dict[str, Any] = {
            **socket_options,
            **self.tls_options(),
            "retry": Retry(NoBackoff(), 1),
        }
        if self.sentinel_password is not None:
            options["password"] = self.sentinel_password
            if self.sentinel_username:
                options["username"] = self.sentinel_username
        return options


def parse_sentinel_url(url: str, setting: str = "GENQ_REDIS_URL") -> SentinelUrl:
    """Read a ``sentinel://`` URL; :class:`RedisUrlError` (naming ``setting``, never the
    password) for anything that does not fit the form of the module doc."""
    from genq.redis_urls import check_credentials, split_credentials

    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise RedisUrlError(f"{setting} ({shown}) is not a Sentinel URL: expected {FORM}")
    if ";" in url:
        raise RedisUrlError(
            f"{setting} ({shown}) is written in kombu's form (sentinel://...;sentinel://...): "
            f"genq's is one URL for both stores, {FORM}: list the Sentinels with commas and "
            "name the master in the path, e.g. sentinel://s1:26379,s2:26379/mymaster/0"
        )
    credentials, after = split_credentials(rest, _AFTER_CREDENTIALS)
    username = password = None
    if credentials is not None:
        check_credentials(credentials, setting, shown)
        user, _, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if ":" in credentials else None
    if "#" in after:
        raise RedisUrlError(
            f"{setting} ({shown}) holds a #, which ends a URL: if it is part of the password, "
            "percent-encode it as %23"
        )
    location, _, query = after.partition("?")
    hosts_text, _, path = location.partition("/")
    sentinels = []
    for host_text in hosts_text.split(","):
        match = _HOST.fullmatch(host_text)
        if not match:
            raise RedisUrlError(
                f"{setting} ({shown}): {host_text[:60]!r} is not a Sentinel's host[:port]; "
                f"expected {FORM}"
            )
        host, port = match.group(1).strip("[]"), int(match.group(2) or DEFAULT_SENTINEL_PORT)
        if not 0 < port < 65536:
            raise RedisUrlError(f"{setting} ({shown}): port {port} is not a TCP port")
        sentinels.append((host, port))
    parts = path.rstrip("/").split("/") if path.rstrip("/") else []
    if not parts or not _MASTER.fullmatch(parts[0]):
        raise RedisUrlError(
            f"{setting} ({shown}) names no master: after the Sentinels' addresses comes the "
            f"name they monitor the primary under ({FORM}, e.g. .../mymaster/0)"
        )
    if len(parts) > 2 or (len(parts) == 2 and not (parts[1].isascii() and parts[1].isdigit())):
        raise RedisUrlError(
            f"{setting} ({shown}) ends in /{'/'.join(parts[1:])[:20]}, which is not a "
            f"database number: {FORM}"
        )
    options = _options(query, setting, shown)
    ssl_on = options.pop("ssl", "false").lower()
    if ssl_on not in _TRUE | _FALSE:
        raise RedisUrlError(f"{setting} ({shown}): ssl={ssl_on[:20]!r}; write ssl=true")
    tls = {k: options.pop(k) for k in list(options) if k.startswith("ssl_")}
    if tls and ssl_on in _FALSE:
        raise RedisUrlError(
            f"{setting} ({shown}) has TLS options ({', '.join(sorted(tls))}) but no ssl=true: "
            "add ssl=true (or remove them)"
        )
    return SentinelUrl(
        sentinels=sentinels,
        master_name=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
        ssl=ssl_on in _TRUE,
        ssl_options=tls,
        raw_credentials=credentials,
    )


# What follows the credentials in a Sentinel URL: hosts, /master[/db], ?query.
_AFTER_CREDENTIALS = re.compile(
    r"(\[[^\]/?#@]*\]|[^/?#@\[\],:]*)(:\d*)?(,(\[[^\]/?#@]*\]|[^/?#@\[\],:]*)(:\d*)?)*"
    r"/[^/?#@]*(/\d*)?/?(\?[^#]*)?"
)


def _options(query: str, setting: str, shown: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RedisUrlError(
            f"{setting} ({shown}): its options (after ?) are not name=value"
        ) from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in _OPTIONS:
            raise RedisUrlError(
                f"{setting} ({shown}) has an option a Sentinel URL does not take: "
                f"{name[:40]!r}; options: {', '.join(_OPTIONS)}"
            )
        options[name] = value
    return options


def master_client(url: str, setting: str = "GENQ_REDIS_URL", **client_options: Any) -> redis.Redis:
    """A redis-py client of the primary the Sentinels of ``url`` name now; it asks them again
    whenever it (re)connects. ``client_options`` go to every connection to the primary
    (decode_responses, timeouts, ...); the Sentinels get the socket timeouts among them."""
    parsed = parse_sentinel_url(url, setting)
    # Sentinels answer in milliseconds: a short timeout moves on to the next one quickly.
    sockets = {
        k: min(v, SENTINEL_TIMEOUT_S) if k.endswith("_timeout") and v is not None else v
        for k, v in client_options.items()
        if k.startswith("socket_")
    }
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        parsed.sentinels, sentinel_kwargs=parsed.sentinel_kwargs(**sockets)
    )
    credentials = {"username": parsed.username, "password": parsed.password}
    options: dict[str, Any] = {
        "db": parsed.db,
        **{k: v for k, v in credentials.items() if v is not None},
        **parsed.tls_options(),
        **client_options,
    }
    # Annotated in redis-py 8.2, not before: called as Any, it type-checks against both.
    master_for: Any = manager.master_for
    client: redis.Redis = master_for(parsed.master_name, redis_class=redis.Redis, **options)
    return client


def kombu_broker(url: str, setting: str = "GENQ_REDIS_URL") -> tuple[str, dict[str, Any]]:
    """``url`` as kombu's broker URL and the transport options it needs besides: a Sentinel
    URL becomes kombu's form (each Sentinel a ``sentinel://`` URL with the credentials and
    database, ``;``-separated: kombu reads them from whichever it fails over to) and its
    ``master_name``/``sentinel_kwargs``; any other URL is kombu's as it is."""
    if not is_sentinel_url(url):
        return url, {}
    parsed = parse_sentinel_url(url, setting)
    login = f"{parsed.raw_credentials}@" if parsed.raw_credentials is not None else ""
    hosts = [f"[{h}]" if ":" in h else h for h, _ in parsed.sentinels]
    urls = [
        f"sentinel://{login}{host}:{port}/{parsed.db}"
        for host, (_, port) in zip(hosts, parsed.sentinels, strict=True)
    ]
    options: dict[str, Any] = {"master_name": parsed.master_name}
    # kombu connects with no socket timeouts: a Sentinel that never answers would hold each
    # discovery of the primary for the kernel's TCP timeout before the next one is asked.
    sentinel_kwargs = parsed.sentinel_kwargs(
        socket_timeout=SENTINEL_TIMEOUT_S, socket_connect_timeout=SENTINEL_TIMEOUT_S
    )
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return ";".join(urls), options


def kombu_ssl(url: str, setting: str = "GENQ_REDIS_URL") -> dict[str, Any] | None:
    """kombu's ``broker_use_ssl`` for a Sentinel URL with ``ssl=true`` (the primary's
    connections; the Sentinels' come with ``sentinel_kwargs``), else None."""
    if not is_sentinel_url(url):
        return None
    parsed = parse_sentinel_url(url, setting)
    if not parsed.ssl:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, **parsed.ssl_options}
