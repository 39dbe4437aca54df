"""Webhook targets: which URLs genq will call, against server-side request forgery.

:func:`check_target` refuses targets on non-global addresses (unless
GENQ_WEBHOOK_ALLOW_PRIVATE=1) when a target is registered (a job's ``callback_url``; a tenant's
``webhook_url`` as far as it can be told without a DNS lookup, at startup), and again before
every delivery (:func:`checked_target`, used by :class:`genq.api.webhooks.WebhookSender`); the
request then
goes to the very address that was checked (DNS answers may change between a check and a
connection), with the URL's host in ``Host`` and as the TLS server name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import httpx

from genq.errors import WebhookTargetError

_ALLOW_HINT = "set GENQ_WEBHOOK_ALLOW_PRIVATE=1 only for a receiver inside a trusted network"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse (:class:`WebhookTargetError`) a webhook URL genq will not call: not http(s) with
    a host, or, unless ``allow_private``, a host with any address that is not global
    (loopback, private, link-local such as cloud metadata, multicast, reserved, unspecified,
    an IPv6 form of one) or that does not resolve at all."""
    checked_target(url, allow_private=allow_private)


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: a URL checked by :func:`checked_target`, and what to send with it."""

    url: httpx.URL  # with the checked address in place of a host name
    host: str  # for logs and the Host header
    headers: dict[str, str]
    extensions: dict[str, Any]


def checked_target(url: str, *, allow_private: bool) -> Target:
    """:func:`check_target`, and the :class:`Target` to send to: unless ``allow_private``, a
    host name is resolved once and the URL pinned to the address checked."""
    # Parsed by httpx, as it will be sent: another parser may read another host in the URL.
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise WebhookTargetError(f"invalid webhook URL: {e}") from None
    host = parsed.raw_host.decode("ascii", "replace")
    if parsed.scheme not in ("http", "https") or not host:
        # Scheme and host only: the rest of a URL may hold credentials.
        raise WebhookTargetError(
            "a webhook URL must be http:// or https:// with a host, not "
            f"{parsed.scheme[:20] or 'no scheme'}:// with {host[:60] or 'no host'}"
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise WebhookTargetError(f"webhook URL {host}: port {port} is out of range")
    if allow_private:
        return Target(parsed, host, {}, {})
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        literal = True
    except ValueError:
        addresses, literal = _resolve(host, port), False
    for address in addresses:
        why = _why_not_global(address)
        if why is not None:
            raise WebhookTargetError(
                f"webhook host {host[:100]} is at {address} ({why}), which genq will not call; "
                + _ALLOW_HINT
            )
    if literal:
        return Target(parsed, host, {}, {})
    pinned = parsed.copy_with(host=str(addresses[0]))
    headers = {"host": parsed.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return Target(pinned, host, headers, extensions)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    # A scope id (fe80::1%eth0) is not part of the address.
    found = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    if not found:
        raise WebhookTargetError(f"webhook host {host[:100]} does not resolve to an address")
    return found


def _why_not_global(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _why_not_global(embedded)
    for why, flag in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    ):
        if flag:
            return why
    return None
