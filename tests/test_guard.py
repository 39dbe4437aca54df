"""The worker's kombu channel and its ack emulation (genq.worker.qos) on a real Redis (hostile
messages are tests/test_hostile.py's)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
import pytest
import redis as redis_py

from genq import keyspace, leases
from genq.connection import connect
from genq.dead_letters import DeadLetterStore
from genq.settings import Settings
from genq.worker.guard import DeadLetters, guarded_transport
from genq.worker.qos import RidingQoS
from genq.worker.work_store import WorkStore


@pytest.mark.parametrize("sentinel", [False, True])
@pytest.mark.parametrize("leases_ride", [False, True])
def test_both_transports_channels_keep_genqs_ack_emulation(
    settings: Settings, sentinel: bool, leases_ride: bool
) -> None:
    dead = DeadLetters(DeadLetterStore(connect(settings.redis_url)), "w", "q", lambda: None)
    channel = guarded_transport(dead, sentinel, leases_ride=leases_ride).Channel
    assert channel.QoS is RidingQoS
    assert channel.leases_ride is leases_ride


def test_a_settled_message_is_acked_in_kombus_books_only_and_others_as_kombu_does(
    settings: Settings,
) -> None:
    redis = connect(settings.redis_url)
    dead = DeadLetters(DeadLetterStore(redis), "w", "guard-test", lambda: None)
    options = leases.transport_options(settings.lease_s)
    with kombu.Connection(
        settings.redis_url, transport=guarded_transport(dead), transport_options=options
    ) as connection:
        channel = connection.channel()
        queue = kombu.Queue("guard-settle", routing_key="guard-settle", channel=channel)
        queue.declare()
        producer = kombu.Producer(channel)
        for body in ("settled", "plain"):
            producer.publish(body, routing_key="guard-settle", serializer="json")
        settled, plain = queue.get(), queue.get()
        assert (settled.payload, plain.payload) == ("settled", "plain")
        qos = channel.qos
        assert isinstance(qos, RidingQoS)
        both = {settled.delivery_tag, plain.delivery_tag}
        assert both <= set(redis.hkeys(leases.unacked_key()))  # both leased
        qos.settled.add(settled.delivery_tag)  # what the worker does once RECORD removed it
        settled.ack()
        # No round trip to remove it (the results' script did): its entry is left as it was.
        assert settled.delivery_tag in redis.hkeys(leases.unacked_key())
        plain.ack()
        assert plain.delivery_tag not in redis.hkeys(leases.unacked_key())
        assert redis.zscore(leases.unacked_index_key(), plain.delivery_tag) is None
        assert qos.settled == set()
        qos._flush()
        assert not both & set(qos._delivered)  # both gone from kombu's own books
        assert qos.can_consume()
        redis.hdel(leases.unacked_key(), settled.delivery_tag)
        redis.zrem(leases.unacked_index_key(), settled.delivery_tag)


@contextmanager
def worker_channel(
    settings: Settings, queue_name: str, leases_ride: bool = True, **options: Any
) -> Iterator[tuple[Any, kombu.Queue]]:
    """A worker's channel (where leases ride in admissions, unless told; ``options``: other
    transport options), and a queue on it."""
    dead = DeadLetters(DeadLetterStore(connect(settings.redis_url)), "w", queue_name, lambda: None)
    options = {**leases.transport_options(settings.lease_s), **options}
    transport = guarded_transport(dead, leases_ride=leases_ride)
    with kombu.Connection(
        settings.redis_url, transport=transport, transport_options=options
    ) as connection:
        channel = connection.channel()
        queue = kombu.Queue(queue_name, routing_key=queue_name, channel=channel)
        queue.declare()
        try:
            yield channel, queue
        finally:
            queue.purge()


def publish(queue: kombu.Queue, *bodies: str) -> None:
    producer = kombu.Producer(queue.channel)
    for body in bodies:
        producer.publish(body, routing_key=queue.routing_key, serializer="json")


def leased(redis: redis_py.Redis, tag: str) -> bool:
    in_hash = tag in set(redis.hkeys(leases.unacked_key()))
    in_index = redis.zscore(leases.unacked_index_key(), tag) is not None
    assert in_hash == in_index, "kombu's hash and index disagree"
    return in_hash


@pytest.mark.parametrize("told", [True, False], ids=["told", "refused after admission"])
def test_a_riding_lease_is_written_by_the_admission_not_on_receipt(
    settings: Settings, told: bool
) -> None:
    redis = connect(settings.redis_url)
    store = WorkStore(redis, 60)
    with worker_channel(settings, "guard-ride") as (channel, queue):
        publish(queue, "one")
        message = queue.get()
        tag = message.delivery_tag
        assert not leased(redis, tag)  # received: held in memory only
        lease = channel.qos.lease(tag)
        assert lease is not None
        assert lease.tag == tag
        admission = store.admit("guard-no-such-job", [0], lease=lease)
        assert admission.status is None  # refused, yet the lease went first
        assert leased(redis, tag)
        entry = redis.hget(leases.unacked_key(), tag)
        assert entry is not None
        held, exchange, routing_key = json.loads(entry)  # what kombu requeues it from
        assert base64.b64decode(held["body"]) == b'"one"'
        assert (exchange, routing_key) == ("", "guard-ride")
        if told:  # the admission succeeded; else it refused the message (no such job)
            channel.qos.leased(tag)
            assert channel.qos.lease(tag) is None
        message.ack()  # the lease goes either way
        assert not leased(redis, tag)
        assert channel.qos.deferred == {}


@pytest.mark.parametrize("how", ["requeued", "restored at close"])
def test_a_message_handed_back_before_its_admission_goes_back_to_the_queue(
    settings: Settings, how: str
) -> None:
    redis = connect(settings.redis_url)
    with worker_channel(settings, "guard-ride-back") as (channel, queue):
        publish(queue, "back")
        message = queue.get()
        assert not leased(redis, message.delivery_tag)
        if how == "requeued":
            message.requeue()  # Redis away at admission: the worker hands the message back
        else:
            channel.qos.restore_unacked_once()  # what kombu does as the channel closes
        assert not leased(redis, message.delivery_tag)
        assert channel.qos.deferred == {}
        again = queue.get()
        assert again is not None
        assert again.payload == "back"
        again.ack()


def test_acking_a_message_whose_lease_was_never_written_leaves_nothing(
    settings: Settings,
) -> None:
    redis = connect(settings.redis_url)
    with worker_channel(settings, "guard-ride-refuse") as (channel, queue):
        publish(queue, "refused")
        message = queue.get()
        message.ack()  # refused before its admission (not a work chunk, say)
        assert not leased(redis, message.delivery_tag)
        assert channel.qos.deferred == {}
        assert queue.get() is None


def test_a_message_rejected_for_good_never_comes_back(settings: Settings) -> None:
    redis = connect(settings.redis_url)
    with worker_channel(settings, "guard-ride-reject") as (channel, queue):
        publish(queue, "gone")
        message = queue.get()
        message.reject(requeue=False)
        assert channel.qos.deferred == {}
        channel.basic_recover(requeue=True)  # restores what the channel still holds
        assert queue.get() is None
        assert not leased(redis, message.delivery_tag)


def test_a_lease_that_cannot_be_written_stays_held_and_every_message_is_tried(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    redis = connect(settings.redis_url)
    broken = keyspace.celery_prefix() + "guard-broken-unacked"
    redis.set(broken, "not a hash")  # every HSET on it fails: a real Redis error
    try:
        with worker_channel(settings, "guard-ride-broken", unacked_key="guard-broken-unacked") as (
            channel,
            queue,
        ):
            publish(queue, "first", "second")
            first, second = queue.get(), queue.get()
            with pytest.raises(redis_py.ResponseError):
                first.requeue()
            assert set(channel.qos.deferred) == {first.delivery_tag, second.delivery_tag}
            channel.qos.restore_unacked()  # as the channel closes: each message is tried
            assert "2 received but not yet leased are lost" in caplog.text
            redis.delete(broken)
            assert queue.get() is None  # neither went back, and both were said lost
    finally:
        redis.delete(broken)


def test_without_riding_kombu_writes_the_lease_on_receipt(settings: Settings) -> None:
    redis = connect(settings.redis_url)
    with worker_channel(settings, "guard-plain", leases_ride=False) as (channel, queue):
        publish(queue, "plain")
        message = queue.get()
        assert leased(redis, message.delivery_tag)
        assert channel.qos.lease(message.delivery_tag) is None
        message.ack()
        assert not leased(redis, message.delivery_tag)
