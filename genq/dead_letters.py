"""The dead-letter list: queue messages workers refused, each with its reason, bounded.

It lives beside the queue, on the broker's Redis (``genq:celery:dead``):
:class:`DeadLetterStore` over the broker's client, and part of :class:`genq.store.JobStore`
(the base of both sides' stores) for code that has one Redis. The worker side that refuses
messages is :mod:`genq.worker.guard`.
"""

from __future__ import annotations

import redis
from pydantic import ValidationError

from genq import keyspace
from genq.schema import DeadLetter
from genq.settings import DEAD_LETTER_LIMIT


class DeadLetterList:
    """Keeps, lists and purges dead letters (``genq:celery:dead``, newest first)."""

    redis: redis.Redis

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a refused message (newest first), bounded to DEAD_LETTER_LIMIT entries."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keyspace.celery_dead(), letter.model_dump_json())
            pipe.ltrim(keyspace.celery_dead(), 0, DEAD_LETTER_LIMIT - 1)
            pipe.execute()

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """Refused messages, newest first (entries another version wrote unreadably skipped)."""
        raw: list[str] = self.redis.lrange(  # type: ignore[assignment]
            keyspace.celery_dead(), offset, offset + limit - 1
        )
        out = []
        for value in raw:
            try:
                out.append(DeadLetter.model_validate_json(value))
            except ValidationError:
                continue
        return out

    def dead_letter_count(self) -> int:
        count: int = self.redis.llen(keyspace.celery_dead())  # type: ignore[assignment]
        return count

    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many there were."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(keyspace.celery_dead())
            pipe.delete(keyspace.celery_dead())
            count, _ = pipe.execute()
        return int(count)


class DeadLetterStore(DeadLetterList):
    """The dead-letter list on its own, over the broker's Redis (GENQ_REDIS_URL), where it
    lives when the results have a Redis of their own (GENQ_RESULTS_URL)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
