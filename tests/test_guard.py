"""The worker's kombu channel: its ack emulation on a real Redis (hostile messages are
tests/test_hostile.py's)."""

from __future__ import annotations

import kombu
import pytest

from genq import leases
from genq.connection import connect
from genq.dead_letters import DeadLetterStore
from genq.settings import Settings
from genq.worker.guard import DeadLetters, SettledQoS, guarded_transport


@pytest.mark.parametrize("sentinel", [False, True])
def test_both_transports_channels_keep_genqs_ack_emulation(
    settings: Settings, sentinel: bool
) -> None:
    dead = DeadLetters(DeadLetterStore(connect(settings.redis_url)), "w", "q", lambda: None)
    assert guarded_transport(dead, sentinel).Channel.QoS is SettledQoS


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
        assert isinstance(qos, SettledQoS)
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
