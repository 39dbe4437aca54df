"""HTTP ``Idempotency-Key``: a retried POST gets the first answer instead of doing the work
twice (the official client retries POSTs on timeouts and 5xx; without this a retry would
create a second batch). The same key with a different request answers 409 (Stripe's rule)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from genq import keyspace
from genq.api.errors import ApiError
from genq.settings import FINALIZE_LOCK_S, IDEMPOTENCY_TTL_S, MAX_IDEMPOTENCY_KEY_CHARS

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
PENDING_TTL_S = FINALIZE_LOCK_S  # a request that died mid-way frees its key after this long


@dataclass(frozen=True)
class Replay:
    """The first answer to a request, given again."""

    status: int
    body: Any


def fingerprint(*parts: object) -> str:
    """A digest of what a request asks for (method, path, canonical body)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class IdempotencyKeys:
    """Remembers each tenant's keys in Redis: any API process answers a retry."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def begin(self, tenant: str, key: str, digest: str) -> Replay | None:
        """Claim ``key`` for a request of fingerprint ``digest``: None if this request is the
        first (do the work, then :meth:`finish`), its first answer if it was answered."""
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ApiError(
                400,
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters",
                param="Idempotency-Key",
            )
        name = keyspace.http_idempotency(tenant, key)
        claim = json.dumps({"fingerprint": digest, "state": "pending"})
        if self.redis.set(name, claim, nx=True, ex=PENDING_TTL_S):
            return None
        raw = self.redis.get(name)
        if raw is None:  # expired between the two calls
            return self.begin(tenant, key, digest)
        stored = json.loads(raw)  # type: ignore[arg-type]
        if stored["fingerprint"] != digest:
            raise ApiError(
                409,
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new request",
                param="Idempotency-Key",
                code="idempotency_key_reused",
                retry=False,
            )
        if stored["state"] == "pending":
            raise ApiError(
                409,
                "a request with this Idempotency-Key is still being processed; retry in a moment",
                param="Idempotency-Key",
                code="idempotency_key_in_use",
                retry_after_s=1,
                retry=True,
            )
        return Replay(int(stored["status"]), stored["body"])

    def finish(self, tenant: str, key: str, digest: str, status: int, body: Any) -> None:
        """Remember the answer to the request that claimed ``key``."""
        value = json.dumps({"fingerprint": digest, "state": "done", "status": status, "body": body})
        self.redis.set(keyspace.http_idempotency(tenant, key), value, ex=IDEMPOTENCY_TTL_S)

    def abandon(self, tenant: str, key: str) -> None:
        """Free ``key`` after its request failed, so that a retry does the work."""
        self.redis.delete(keyspace.http_idempotency(tenant, key))
