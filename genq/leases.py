"""Leases on queue messages: what genq knows about kombu's ack emulation in Redis (two other
places touch these keys where queue and results share one Redis: the results script,
:data:`genq.scripts.RECORD`, which removes a message's lease with the results that end it, its
ack; and :data:`LEASE`, which writes a message's lease in its admission's round trip).

kombu's Redis transport keeps each message a worker holds (received, not yet acknowledged) in
``genq:celery:unacked`` (delivery tag -> message) and ``genq:celery:unacked_index`` (delivery
tag -> time). Any consumer's sweep puts a message whose time is older than the visibility
timeout back at the head of its queue. genq turns that into a *lease*: the visibility timeout
is GENQ_LEASE_S, the holder's heartbeat renews its entries (:meth:`Leases.renew`), every worker
sweeps every LEASE_SWEEP_S, so a healthy worker's batch is never handed on however long it
runs, and a dead worker's messages go to another within a lease (docs/reliability.md).

genq names kombu's keys itself (kombu adds ``keyspace.celery_prefix()``) and passes them to
kombu (:func:`transport_options`), so that the renewal here and kombu agree on one name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from genq import keyspace
from genq.settings import LEASE_SWEEP_S

UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
UNACKED_MUTEX = "unacked_mutex"

# KEYS: kombu's unacked index. ARGV: now, then delivery tags. Renews the leases this worker
# holds; returns the tags that are no longer held (requeued after the lease expired).
RENEW = """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


# KEYS: kombu's unacked hash and index. ARGV: delivery tag, now, the held message as kombu
# keeps it. Writes a message's lease as kombu's own transaction does, in the admission's
# round trip (genq.worker.qos).
LEASE = """
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Lease:
    """A message's lease as kombu writes it: its delivery tag and the held message (JSON of
    [message, exchange, routing key], what kombu requeues it from)."""

    tag: str
    message: str


def unacked_key() -> str:
    """Full name of kombu's hash of held messages (delivery tag -> message)."""
    return keyspace.celery_prefix() + UNACKED


def unacked_index_key() -> str:
    """Full name of kombu's zset of held messages (delivery tag -> lease time)."""
    return keyspace.celery_prefix() + UNACKED_INDEX


def transport_options(lease_s: int) -> dict[str, Any]:
    """kombu's Redis transport options that make its ack emulation genq's leases."""
    return {
        "global_keyprefix": keyspace.celery_prefix(),
        "unacked_key": UNACKED,
        "unacked_index_key": UNACKED_INDEX,
        "unacked_mutex_key": UNACKED_MUTEX,
        "visibility_timeout": lease_s,
        "unacked_restore_interval": LEASE_SWEEP_S,
        "unacked_restore_throttle": 1,  # kombu's default scans every 10th sweep only
        # kombu holds this lock while it requeues; a worker killed holding it would stop
        # every recovery for kombu's default of 5 minutes.
        "unacked_mutex_expire": LEASE_SWEEP_S * 2,
    }


class Leases:
    """Renews a worker's leases, and counts the messages workers hold."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._renew = client.register_script(RENEW)

    def renew(self, delivery_tags: Sequence[str]) -> list[str]:
        """Renew the leases on messages a worker holds; return the tags it no longer holds.

        A lease not renewed for GENQ_LEASE_S is expired: kombu requeues the message (the
        worker is presumed dead) and the old holder must neither run the rest of it nor ack it.
        """
        if not delivery_tags:
            return []
        lost = self._renew(keys=[unacked_index_key()], args=[time.time(), *delivery_tags])
        return [tag.decode() if isinstance(tag, bytes) else str(tag) for tag in lost]

    def held(self) -> int:
        """Messages some worker holds now (received, not yet acknowledged)."""
        count: int = self.redis.zcard(unacked_index_key())  # type: ignore[assignment]
        return count
