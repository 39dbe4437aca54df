"""What the Redis server says of itself, for warnings and errors: its append-only file, how
long it has run, and one-time notices already given.

Part of :class:`genq.store.JobStore` (the base of both sides' stores).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from genq import keyspace
from genq.settings import RECENT_RESTART_S


class ServerFacts:
    """Persistence and uptime of the server, and a job's absence explained with them."""

    redis: redis.Redis
    result_ttl_s: int

    def append_only(self) -> bool | None:
        """Whether the server keeps an append-only file (None: it will not say, e.g. an ACL
        user without INFO). Without one, a restart loses every job."""
        try:
            info: dict[str, Any] = self.redis.info("persistence")  # type: ignore[assignment]
        except redis.exceptions.ResponseError:
            return None
        return bool(int(info["aof_enabled"])) if "aof_enabled" in info else None

    def _missing_job_message(self, job_id: str) -> str:
        """Why ``job_id`` may be missing, as accurately as the server lets us say (one line)."""
        ttl = _duration(self.result_ttl_s)
        message = (
            f"no job {job_id!r}: it was never submitted to this Redis (check GENQ_REDIS_URL), "
            f"or it expired {ttl} after it ended (its result TTL)"
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
