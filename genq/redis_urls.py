"""Reading Redis URLs as their writers meant them: :func:`check_redis_url` refuses, before
anything connects, a URL whose text cannot mean what was meant (an unknown scheme, a user name
or password that must be percent-encoded, a database that is not a number), with an error
naming the setting and never the password; :func:`url_options` reads one as redis-py does."""

from __future__ import annotations

import re
from typing import Any

import redis.connection

from genq.errors import RedisUrlError
from genq.sentinel import FORM as SENTINEL_FORM
from genq.sentinel import SCHEME as SENTINEL_SCHEME
from genq.sentinel import parse_sentinel_url
from genq.settings import redact_url


def check_redis_url(redis_url: str, setting: str = "GENQ_REDIS_URL") -> None:
    """Refuse a Redis URL whose text cannot mean what its writer meant: an unknown scheme, a
    user name or password with characters that must be percent-encoded (a URL parser would cut
    the URL there, and could connect to another host with part of the password), or a database
    that is not a number; a ``sentinel://`` URL that does not fit :data:`genq.sentinel.FORM`.
    Raises :class:`RedisUrlError` naming ``setting``; the password is never shown."""
    url = redact_url(redis_url)
    scheme, sep, rest = redis_url.partition("://")
    if sep and scheme.lower() == SENTINEL_SCHEME:
        parse_sentinel_url(redis_url, setting)
        return
    if not sep or scheme.lower() not in {"redis", "rediss", "unix"}:
        raise RedisUrlError(
            f"invalid Redis URL {url!r} in {setting}: expected "
            "redis://[user:password@]host:port/db (rediss:// for TLS, or "
            f"{SENTINEL_FORM} for Redis Sentinel)"
        )
    credentials, host = split_credentials(rest)
    if credentials is not None:
        check_credentials(credentials, setting, url)
    if "#" in host:
        raise RedisUrlError(
            f"{setting} ({url}) holds a #, which ends a URL: if it is part of the "
            "password, percent-encode it as %23"
        )
    if scheme.lower() != "unix":
        path = host.partition("?")[0].partition("/")[2].rstrip("/")
        if path and not (path.isascii() and path.isdigit()):
            raise RedisUrlError(
                f"{setting} ({url}) ends in /{path[:20]}, which is not a database number: "
                "end it with /0 (or another database)"
            )


# What follows the credentials in a URL as it should be: host[:port][/db][?query].
_AFTER_CREDENTIALS = re.compile(r"(\[[^\]/?#@]*\]|[^/?#@\[\]:]*)(:\d*)?(/\d*)?(\?[^#]*)?")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODINGS = {"#": "%23", "?": "%3F", "/": "%2F", "@": "%40", "%": "%25"}


def split_credentials(
    rest: str, after: re.Pattern[str] = _AFTER_CREDENTIALS
) -> tuple[str | None, str]:
    """``rest`` (the URL after ``scheme://``) as (user:password or None, the rest), read as
    its writer meant it even where a URL parser would not: a password holding / ? or # ends
    the URL's host part early, so the @ that ends the credentials comes after it. ``after``
    is what may follow the credentials (a Sentinel URL's differs)."""
    host_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, host_end)
    if at >= 0:
        return rest[:at], rest[at + 1 :]
    if "@" not in rest or after.fullmatch(rest):
        return None, rest  # no credentials (an @ in the query, a file path, is its own)
    for at in sorted((i for i, c in enumerate(rest) if c == "@"), reverse=True):
        if after.fullmatch(rest, at + 1):
            return rest[:at], rest[at + 1 :]
    return rest[: rest.rfind("@")], rest[rest.rfind("@") + 1 :]


def check_credentials(credentials: str, setting: str, shown: str) -> None:
    """Refuse a URL's ``user:password`` with characters a URL must percent-encode
    (:class:`RedisUrlError` naming ``setting`` and the URL as ``shown``, never the password)."""
    user, _, password = credentials.partition(":")
    for part, text in (("user name", user), ("password", password)):
        bad = unencoded(text)
        if bad:
            raise RedisUrlError(
                f"the {part} in {setting} ({shown}) holds characters that must be "
                f"percent-encoded in a URL: write {', '.join(bad)} (in Python: "
                "urllib.parse.quote(text, safe=''))"
            )


def unencoded(text: str) -> list[str]:
    """How to write each character of ``text`` that a URL's user name or password must have
    percent-encoded ("# as %23"), in the order they first appear; [] if none."""
    found: list[str] = []
    for position, char in enumerate(text):
        if char == "%" and not _BAD_PERCENT.match(text, position):
            continue
        if char in _ENCODINGS and f"{char} as {_ENCODINGS[char]}" not in found:
            found.append(f"{char} as {_ENCODINGS[char]}")
    return found


def url_options(redis_url: str) -> dict[str, Any]:
    """The connection options in ``redis_url`` as redis-py reads them ({} if it cannot)."""
    try:
        options: dict[str, Any] = redis.connection.parse_url(redis_url)  # type: ignore[no-untyped-call]
    except ValueError:
        return {}
    return options
