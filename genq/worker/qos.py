"""kombu's ack emulation (its Redis QoS), with its writes riding in genq's own scripts where
the queue and the results share one Redis.

kombu keeps a *lease* on each message a worker holds: an entry in its unacked hash and index
(:mod:`genq.leases`), written in a transaction of its own as the message arrives and removed
in another when it is acked, two round trips a message on top of genq's own. Here:

* **the ack** rides in the results script: RECORD removes the lease with the message's last
  results (``settled``), so acking it keeps kombu's books only;
* **the lease** rides in the message's admission (:meth:`WorkStore.admit` runs
  :data:`~genq.leases.LEASE` first in the admission's pipeline), where ``leases_ride`` is set
  on the channel: it waits in ``deferred`` until the admission wrote it.

A message between its pop and its admission holds no lease in Redis, as in kombu between its
BRPOP and its lease transaction: one round trip either way. Every path that needs the lease in
Redis before the admission wrote it (a message handed back, a restore when the channel closes)
writes it first, as kombu's own ``append`` would have; an ack removes it whether or not it was
written. An admission whose reply was lost (a timeout) may have written the lease after all,
and the message handed back meanwhile: that lease then expires and the message comes again, a
redelivery whose items already have results (skipped, never run twice). With a results store
of its own (GENQ_RESULTS_URL), neither rides: kombu's ack and lease stay as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.json import dumps

from genq.leases import Lease

log = logging.getLogger("genq.worker")


class RidingQoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's Redis QoS whose lease writes and acks genq's scripts may carry (module doc).

    ``settled``: delivery tags whose leases RECORD removed with their last results.
    ``deferred``: leases not yet written, by delivery tag (only where ``leases_ride``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled: set[str] = set()
        self.deferred: dict[str, Lease] = {}

    def append(self, message: Any, delivery_tag: str) -> None:
        if not self.channel.leases_ride:
            super().append(message, delivery_tag)
            return
        info = message.delivery_info
        entry = dumps([message._raw, info["exchange"], info["routing_key"]])
        self.deferred[delivery_tag] = Lease(delivery_tag, entry)
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def lease(self, delivery_tag: str) -> Lease | None:
        """The message's lease for its admission to write, or None: written already, or not
        deferred here. It stays deferred until :meth:`leased`."""
        return self.deferred.get(delivery_tag)

    def leased(self, delivery_tag: str) -> None:
        """The admission wrote the message's lease."""
        self.deferred.pop(delivery_tag, None)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self.settled:
            self.settled.discard(delivery_tag)
            kombu_virtual.QoS.ack(self, delivery_tag)
            return
        # Deferred or not, remove it from Redis: an admission whose reply was lost may have
        # written it.
        self.deferred.pop(delivery_tag, None)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        # Not requeued: gone for good, whatever a later restore of the unacked would do.
        if not requeue:
            self.deferred.pop(delivery_tag, None)
        super().reject(delivery_tag, requeue)

    def restore_unacked(self, client: Any = None) -> list[tuple[BaseException, Any]]:
        # kombu's stops at the first message it cannot hand back (Redis away) and leaves the
        # rest untried and unreported: each is tried here. One whose lease is in Redis goes
        # back when the lease expires; one held only here is lost, and said so.
        lost: list[str] = []
        failed = 0
        error: BaseException | None = None
        with self.channel.conn_or_acquire(client) as client:
            for tag in list(self._delivered):
                held_here = tag in self.deferred
                try:
                    self.restore_by_tag(tag, client=client)
                except Exception as e:
                    failed, error = failed + 1, e
                    if held_here:
                        lost.append(tag)
        self._delivered.clear()
        if failed:
            log.error(
                "could not hand %d held message(s) back to the queue (%s: %s); %d will be "
                "requeued when their leases expire, %d received but not yet leased are lost "
                "(their items get no result: submit those jobs again)",
                failed,
                type(error).__name__,
                error,
                failed - len(lost),
                len(lost),
            )
        self.deferred.clear()
        return []  # reported above: nothing for kombu to dump (message bodies hold prompts)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        # kombu requeues a message from its lease (a reject with requeue, the restore of the
        # unacked at close): one not yet written is written first, or it would be dropped.
        lease = self.deferred.pop(tag, None)
        if lease is not None:
            try:
                with self.pipe_or_acquire(client=client) as pipe:
                    pipe.zadd(self.unacked_index_key, {tag: time.time()}).hset(
                        self.unacked_key, tag, lease.message
                    ).execute()
            except BaseException:
                self.deferred[tag] = lease  # still only here: the next restore tries again
                raise
        super().restore_by_tag(tag, client, leftmost)
