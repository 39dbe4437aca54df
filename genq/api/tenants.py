"""Tenants and their API keys: ``GENQ_API_KEYS`` (each key its own tenant) or a TOML file
(``GENQ_API_TENANTS_FILE``)::

    [tenants.marketing]
    keys = ["sk-genq-..."]
    webhook_url = "https://hooks.example.com/genq"
    webhook_secret = "whsec_..."
    max_file_bytes = 104857600
    max_file_lines = 50000

Keys are kept only as SHA-256 digests and compared in constant time; they are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from genq.api.errors import ApiError, first_problem
from genq.errors import ApiConfigError, WebhookTargetError
from genq.schema import TenantPolicy
from genq.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TENANT_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_KEY_CHARS = 16  # shorter keys are guessable
MIN_SECRET_BYTES = 24  # of a webhook secret (Standard Webhooks: 24 to 64)
_TENANT_FIELDS = {
    "keys",
    "webhook_url",
    "webhook_secret",
    "max_file_bytes",
    "max_file_lines",
    *TenantPolicy.model_fields,  # weight, max_queued_items, max_jobs_in_progress
}


@dataclass(frozen=True)
class Tenant:
    """Who a request is from, and what it may do."""

    name: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    max_file_bytes: int | None = None  # None: the service's limit (GENQ_MAX_INPUT_FILE_BYTES)
    max_file_lines: int | None = None  # None: GENQ_MAX_ITEMS_PER_JOB
    # Its share of the workers and its quotas; None: weight 1, no quotas. Written to Redis
    # when `genq api` starts, where every producer and every worker's refill reads it.
    policy: TenantPolicy | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Tenants:
    """The configured tenants, found by API key."""

    def __init__(self, keyed: list[tuple[str, Tenant]]) -> None:
        if not keyed:
            raise ApiConfigError(
                "no API keys: set GENQ_API_KEYS=key1,key2 (each key its own tenant) or "
                "GENQ_API_TENANTS_FILE=tenants.toml before starting `genq api`"
            )
        self._keys = [(_digest(key), tenant) for key, tenant in keyed]
        self.by_name = {tenant.name: tenant for _, tenant in keyed}

    def policies(self) -> dict[str, TenantPolicy | None]:
        """Each tenant's policy by name (None: the defaults)."""
        return {name: tenant.policy for name, tenant in self.by_name.items()}

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant ``key`` belongs to, or None. Every configured key is compared, in
        constant time each, so the time taken says nothing about which came close."""
        offered = _digest(key)
        found = None
        for digest, tenant in self._keys:
            if hmac.compare_digest(offered, digest):
                found = tenant
        return found

    def require(self, authorization: str | None) -> Tenant:
        """The tenant of an ``Authorization: Bearer KEY`` header; 401 without a valid one."""
        scheme, _, key = (authorization or "").partition(" ")
        if not authorization:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                code="missing_api_key",
            )
        tenant = self.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return tenant


def load_tenants(settings: Settings) -> Tenants:
    """The tenants of ``settings``: the tenants file if set, else GENQ_API_KEYS.

    Each key of GENQ_API_KEYS is its own tenant, named ``key-`` + the first 12 hex digits of
    its SHA-256 (stable however the list is reordered, and not the key itself).
    """
    if settings.api_tenants_file:
        keyed = _read_file(Path(settings.api_tenants_file))
    else:
        keys = [k.strip() for k in (settings.api_keys or "").split(",") if k.strip()]
        keyed = [(key, Tenant(name="key-" + _digest(key).hex()[:12])) for key in keys]
    seen: set[bytes] = set()
    for key, tenant in keyed:
        if len(key) < MIN_KEY_CHARS:
            raise ApiConfigError(
                f"an API key of tenant {tenant.name!r} has {len(key)} characters; use at "
                f"least {MIN_KEY_CHARS} (for example: python -c 'import secrets; "
                'print("sk-genq-" + secrets.token_urlsafe(24))\')'
            )
        if _digest(key) in seen:
            raise ApiConfigError(f"an API key is given twice (again for tenant {tenant.name!r})")
        seen.add(_digest(key))
        if tenant.webhook_url:
            try:
                _check_webhook_url(tenant.webhook_url, settings.webhook_allow_private)
            except WebhookTargetError as e:
                raise ApiConfigError(f"tenant {tenant.name!r}: {e}") from e
    return Tenants(keyed)


def _check_webhook_url(url: str, allow_private: bool) -> None:
    """What can be checked of a webhook URL at start without DNS: its form, and an address
    written in it. A name is resolved and checked before each delivery instead, so that one
    receiver's DNS being away does not stop the service from starting."""
    from genq.api.webhook_targets import check_target

    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as e:
        raise WebhookTargetError(f"webhook_url is not a URL: {e}") from None
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal or not host or not url.lower().startswith(("http://", "https://")):
        check_target(url, allow_private=allow_private)
    elif (host == "localhost" or host.endswith(".localhost")) and not allow_private:
        raise WebhookTargetError(
            f"webhook_url host {host} is this machine; set GENQ_WEBHOOK_ALLOW_PRIVATE=1 "
            "only for a receiver inside a trusted network"
        )


def _read_file(path: Path) -> list[tuple[str, Tenant]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ApiConfigError(f"cannot read GENQ_API_TENANTS_FILE {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ApiConfigError(f"GENQ_API_TENANTS_FILE {path} is not valid TOML: {e}") from e
    tenants = data.get("tenants")
    if not isinstance(tenants, dict) or not tenants:
        raise ApiConfigError(
            f"GENQ_API_TENANTS_FILE {path} has no [tenants.NAME] tables (see docs/api.md)"
        )
    keyed: list[tuple[str, Tenant]] = []
    for name, table in tenants.items():
        keyed += _tenant(path, name, table)
    return keyed


def _valid_secret(secret: Any) -> bool:
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        return False
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(key) >= MIN_SECRET_BYTES


def _tenant(path: Path, name: str, table: Any) -> list[tuple[str, Tenant]]:
    where = f"{path} [tenants.{name}]"
    if not TENANT_NAME.match(name):
        raise ApiConfigError(f"{where}: a tenant name is 1-64 letters, digits and _ . @ -")
    if not isinstance(table, dict):
        raise ApiConfigError(f"{where}: expected a table")
    unknown = set(table) - _TENANT_FIELDS
    if unknown:
        raise ApiConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_TENANT_FIELDS))}"
        )
    keys = table.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ApiConfigError(f'{where}: keys must be a non-empty list of strings: keys = ["..."]')
    url, secret = table.get("webhook_url"), table.get("webhook_secret")
    if url is not None and not isinstance(url, str):
        raise ApiConfigError(f'{where}: webhook_url must be a string: webhook_url = "https://..."')
    if (url is None) != (secret is None):
        raise ApiConfigError(f"{where}: webhook_url and webhook_secret go together")
    if secret is not None and not _valid_secret(secret):
        raise ApiConfigError(
            f"{where}: webhook_secret must be a 'whsec_<base64>' secret of at least 24 bytes "
            "(python -c 'from genq.api.webhooks import new_secret; print(new_secret())')"
        )
    limits = {}
    for field in ("max_file_bytes", "max_file_lines"):
        value = table.get(field)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ApiConfigError(f"{where}: {field} must be a positive integer")
        limits[field] = value
    policy = None
    fields = {k: table[k] for k in TenantPolicy.model_fields if k in table}
    if fields:
        if isinstance(fields.get("weight"), int) and not isinstance(fields["weight"], bool):
            fields["weight"] = float(fields["weight"])  # weight = 3 is a weight
        try:
            policy = TenantPolicy.model_validate(fields)
        except ValidationError as e:
            where_in, message = first_problem(e)
            raise ApiConfigError(f"{where}: {where_in}: {message}") from None
    tenant = Tenant(name=name, webhook_url=url, webhook_secret=secret, policy=policy, **limits)
    return [(key, tenant) for key in keys]
