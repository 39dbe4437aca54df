"""What the Redis server says of itself, for warnings and errors: its append-only file, how
long it has run, and one-time notices already given.

Part of :class:`genq.store.JobStore` (the base of both sides' stores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from genq import keyspace
from genq.settings import RECENT_RESTART_S


def append_only(client: redis.Redis) -> bool | None:
    """Whether the server keeps an append-only file (None: it will not say, e.g. an ACL user
    without INFO). Without one, a restart loses everything it holds."""
    try:
        info: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
    except redis.exceptions.ResponseError:
        return None
    return bool(int(info["aof_enabled"])) if "aof_enabled" in info else None


def connected_replicas(client: redis.Redis) -> int | None:
    """How many replicas the server has online now (0 for a replica itself or a lone server);
    None when it will not say (INFO denied). A replica still loading a full resync is not
    counted: WAIT counts only online replicas, so waiting for it would time out."""
    try:
        info: dict[str, Any] = client.info("replication")  # type: ignore[assignment]
    except redis.exceptions.ResponseError:
        return None
    if info.get("role") != "master":
        return 0
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


@dataclass(frozen=True)
class Confirmation:
    """What a server confirmed of the writes made to it so far."""

    on_disk: bool | None  # in its append-only file (None: it cannot tell: no AOF, no WAITAOF)
    on_replica: bool | None  # received by a replica (None: it has none connected, or hides it)


def confirm_writes(
    client: redis.Redis,
    mark_key: str,
    timeout_s: float,
    *,
    disk: bool = True,
    replicas: int | None = None,
) -> Confirmation:
    """Write ``mark_key`` (the time), then wait until the server has fsynced it (WAITAOF, when
    ``disk``) and a replica has received it (WAIT 1, when it has replicas), on one connection.
    Both servers keep one log in write order, so that covers every earlier write, from any
    connection (kombu's too).

    With Sentinel, a failover promotes a replica: a write the old primary acknowledged but no
    replica received yet is lost with it (replication is asynchronous). Waiting for a replica
    closes that gap for what is waited on (a submitted job), not for every write.
    ``replicas``: how many the server has, when the caller knows (else INFO is asked)."""
    if replicas is None and timeout_s > 0:
        replicas = connected_replicas(client)
    if not disk and not replicas:
        return Confirmation(None, None)
    on_disk: bool | None = None
    on_replica: bool | None = None
    timeout_ms = int(timeout_s * 1000)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(mark_key, repr(time.time()), ex=MARK_TTL_S)
        if disk:
            pipe.execute_command("WAITAOF", 1, 0, timeout_ms)  # type: ignore[no-untyped-call]
        if replicas:
            pipe.execute_command("WAIT", 1, timeout_ms)  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=False)
    for reply in replies[1:]:
        if isinstance(reply, redis.exceptions.ResponseError):
            reason = str(reply).lower()
            # Too old a server, no append-only file, or an ACL user denied the command.
            if any(s in reason for s in ("unknown command", "appendonly is disabled", "noperm")):
                continue
            raise reply
        if isinstance(reply, Exception):
            raise reply
    if disk:
        local = replies[1]
        if isinstance(local, list | tuple):
            on_disk = int(local[0]) >= 1
    if replicas:
        acknowledged = replies[-1]
        if isinstance(acknowledged, int):
            on_replica = acknowledged >= 1
    return Confirmation(on_disk, on_replica)


MARK_TTL_S = 3600  # a confirmation's mark key (the time of the last confirmed write)


class ServerFacts:
    """Persistence and uptime of the server, and a job's absence explained with them."""

    redis: redis.Redis
    result_ttl_s: int
    # The variable that names this server (GENQ_RESULTS_URL when the results have their own).
    url_setting = "GENQ_REDIS_URL"

    def append_only(self) -> bool | None:
        """Whether the server keeps an append-only file (None: it will not say, e.g. an ACL
        user without INFO). Without one, a restart loses every job."""
        return append_only(self.redis)

    def _missing_job_message(self, job_id: str) -> str:
        """Why ``job_id`` may be missing, as accurately as the server lets us say (one line)."""
        ttl = _duration(self.result_ttl_s)
        message = (
            f"no job {job_id!r}: it was never submitted to this Redis (check "
            f"{self.url_setting}), or it expired {ttl} after it ended (its result TTL)"
        )
        append_only, uptime_s = self._persistence()
        if append_only is False and uptime_s is not None and uptime_s < RECENT_RESTART_S:
            return (
                f"{message}, or it was lost with a restart: Redis started {_duration(uptime_s)} "
                "ago and has no append-only file, so a restart loses every job (submit it again)"
            )
        if append_only is True:
            return f"{message}, or Redis was flushed"
        return (
            f"{message}, or Redis lost its data (it restarted without an append-only file, "
            "or was flushed)"
        )

    def _persistence(self) -> tuple[bool | None, int | None]:
        """(append-only file on?, seconds since the server started); None where INFO is denied."""
        try:
            server: dict[str, Any] = self.redis.info("server")  # type: ignore[assignment]
            append_only = self.append_only()
        except redis.exceptions.RedisError:  # denied (an ACL user without INFO), or gone
            return None, None
        uptime = server.get("uptime_in_seconds")
        return append_only, None if uptime is None else int(uptime)

    def claim_notice(self, name: str) -> bool:
        """Mark the one-time warning ``name`` as given for this Redis; True only the first time
        (SET NX: concurrent producers agree on who warns). A Redis that loses its data forgets
        its notices too, so the warning comes again: it is due again."""
        return bool(self.redis.set(keyspace.notice(name), repr(time.time()), nx=True))


def _duration(seconds: float) -> str:
    """``seconds`` for a message, in its largest whole unit: 7d, 3h, 12m, 40s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
