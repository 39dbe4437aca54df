"""Enqueueing a job (:meth:`Client.enqueue`): its record written, its idempotency key claimed,
its messages sent (by the sender :func:`new_sender` makes); then the promise behind the id
returned kept: Redis's append-only file and, where the server has replicas, a replica hold the
job (docs/reliability.md). New jobs' ids come from :func:`new_job_id`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import redis
from kombu.transport import redis as kombu_redis

from genq import keyspace
from genq.errors import DurabilityError, EnqueueError
from genq.feeder import Feeder
from genq.producer.staging import Sender, StagingChannel
from genq.sentinel import is_sentinel_url
from genq.server_facts import confirm_writes, connected_replicas
from genq.settings import DURABLE_SUBMIT_TIMEOUT_S, REPLICA_CHECK_S, Settings
from genq.submissions import NewJob

if TYPE_CHECKING:
    from genq.producer.client import Client


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return secrets.token_hex(16)


class _SentinelStagingChannel(StagingChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The producer's staging channel on a broker behind Redis Sentinel."""


class _SentinelStagingTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = _SentinelStagingChannel


def new_sender(settings: Settings, feeder: Feeder) -> Sender:
    """The :class:`Sender` a client sends its jobs' messages with (:attr:`Client.sender`)."""
    sender = Sender(settings, feeder)
    if is_sentinel_url(settings.redis_url):
        # The sender's kombu channel stages messages; behind Sentinel it must find the
        # primary through them, as the workers' channels do.
        sender.celery.conf.broker_transport = _SentinelStagingTransport
    return sender


def enqueue(
    client: Client,
    job_id: str,
    job: NewJob,
    messages: Iterable[str],
    idempotency: tuple[str, str] | None = None,
) -> str:
    """Write the job's record, then send its ``messages``; return the job id (or the id of the
    job ``idempotency`` is already bound to). Raises as :meth:`Client.enqueue` says."""
    if idempotency is not None:
        bound = client.guarded(lambda: client.store.bound_job(*idempotency))
        if bound is not None:  # a retried submit: its job exists, whatever the quotas
            return bound
    client.guarded(lambda: client.store.create_job(job_id, job))
    if idempotency is not None:
        key, fingerprint = idempotency
        try:
            earlier = client.guarded(
                lambda: client.store.claim_idempotency_key(key, fingerprint, job_id)
            )
        except BaseException:
            client.guarded(lambda: client.store.discard_job(job_id, job.tenant))
            raise
        if earlier is not None:
            client.guarded(lambda: client.store.discard_job(job_id, job.tenant))
            return earlier
    try:
        client.sender.send(job_id, job, messages)
    except Exception as e:
        why = type(e).__name__
        if isinstance(e, redis.exceptions.RedisError):
            problem = client.broker_endpoint.explain(e)
            why = str(problem) if problem is not None else why
        message = f"could not enqueue the job ({why}); submit it again"
        try:
            client.store.fail(job_id, message)
            if client.split:  # no refill reads the record: what was staged goes now
                client.feeder.drop(job_id)
        except redis.exceptions.RedisError:
            pass  # its messages are skipped by workers: the job has failed
        finally:
            raise EnqueueError(f"job {job_id}: {message}") from e
    # Returning the id is the promise that the job survives a Redis crash: with an
    # append-only file, wait until it holds the job (no-op on a server without one).
    client.guarded(lambda: client.store.confirm_durable(job_id, DURABLE_SUBMIT_TIMEOUT_S))
    # ... and a failover: with replicas, until one has it (see docs/reliability.md).
    _confirm_replicated(client, job_id)
    return job_id


class ReplicaCounts:
    """Servers' online replicas, each asked at most every REPLICA_CHECK_S: a submit (each
    single /v1/completions request is one) should not pay an INFO round trip each time."""

    def __init__(self) -> None:
        self._checked: dict[int, tuple[float, int | None]] = {}  # by id(server)

    def of(self, server: redis.Redis) -> int | None:
        now = time.monotonic()
        checked = self._checked.get(id(server))
        if checked is None or now - checked[0] > REPLICA_CHECK_S:
            checked = (now, connected_replicas(server))
            self._checked[id(server)] = checked
        return checked[1]


def _confirm_replicated(client: Client, job_id: str) -> None:
    """Wait until a replica of each server holds the job (when the server has replicas);
    with the stores split, until the broker's append-only file holds its messages too.
    :class:`DurabilityError` when a server could not confirm it in time."""
    sides = [(client.store.redis, client.results_endpoint, keyspace.durable_mark(), False)]
    if client.split:
        mark = keyspace.sched_mark(client.settings.queue, "durable")
        sides.append((client.broker, client.broker_endpoint, mark, True))
    for server, endpoint, mark, disk in sides:
        replicas = client.guarded(partial(client.replicas.of, server), endpoint)
        confirm = partial(
            confirm_writes, server, mark, DURABLE_SUBMIT_TIMEOUT_S, disk=disk, replicas=replicas
        )
        confirmed = client.guarded(confirm, endpoint)
        lost = (
            "its append-only file"
            if confirmed.on_disk is False
            else "a replica"
            if confirmed.on_replica is False
            else None
        )
        if lost is not None:
            raise DurabilityError(
                f"job {job_id} was enqueued but Redis at {endpoint.shown} "
                f"({endpoint.setting}) did not confirm that {lost} holds it within "
                f"{DURABLE_SUBMIT_TIMEOUT_S:g}s; "
                "it may run, or be lost if that Redis fails now. Check the server and its "
                "replicas, then submit again with the same idempotency key"
            )
