"""The producer's kombu channel, which can keep the messages it would queue instead of pushing
them: the fair feeder stages them on their job's pending list (:mod:`genq.feeder`).

Celery builds the message (task name, headers, body encoding, delivery tag) exactly as for a
queue; only kombu's last step, the LPUSH onto the queue's list, is replaced. kombu offers no
hook there, so the channel's ``_put`` is overridden (kombu 5.x's Redis channel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps


class StagingChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel; inside :meth:`staging`, messages are kept, not queued."""

    staged: list[str] | None = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self.staged is None:
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
        else:
            self.staged.append(dumps(message))  # type: ignore[no-untyped-call]

    @contextmanager
    def staging(self) -> Iterator[list[str]]:
        """Collect the serialised messages published on this channel meanwhile."""
        self.staged = []
        try:
            yield self.staged
        finally:
            self.staged = None


class StagingTransport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = StagingChannel
