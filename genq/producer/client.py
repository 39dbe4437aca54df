"""The Python client: submit bulk jobs, follow their progress, read their results.

from genq import Client
client = Client("redis://localhost:6379/0")
job_id = client.submit(["Write a tagline for a bakery", ...], {"max_new_tokens": 32})
for result in client.follow_results(job_id):  # as they are written; or wait(), then
    print(result.custom_id, result.outputs[0])  # iter_results() to read them page by page
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from functools import partial
from typing import TypeVar

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from genq import keyspace
from genq.connection import Endpoint, broker_endpoint, results_endpoint, stores_split
from genq.dead_letters import DeadLetterStore
from genq.errors import (
    DurabilityError,
    EnqueueError,
    JobNotFinishedError,
)
from genq.feeder import (
    Feeder,
    QueueView,
    TenantUsage,
    read_policies,
    read_usage,
    remove_policy,
    write_policy,
)
from genq.producer.staging import Sender, StagingChannel
from genq.producer.validation import ItemInput, ParamsInput, validate_job, with_job_options
from genq.producer.waiting import follow, polls
from genq.schema import (
    DeadLetter,
    ItemResult,
    JobInfo,
    JobSpec,
    Priority,
    TenantPolicy,
    WorkerInfo,
)
from genq.sentinel import is_sentinel_url
from genq.server_facts import append_only, confirm_writes, connected_replicas
from genq.settings import (
    DURABLE_SUBMIT_TIMEOUT_S,
    REPLICA_CHECK_S,
    Settings,
)
from genq.submissions import JobQuery, NewJob, SubmissionStore

RETRY_OF = "retry_of"  # metadata key linking a retry job to the job whose failed items it holds
NO_AOF_NOTICE = "no-aof"  # notice name: producers warned that Redis keeps no append-only file


class ResultFilter(str, Enum):
    """Which results :meth:`Client.iter_results` yields."""

    ALL = "all"
    OK = "ok"  # items that ended without an error
    FAILED = "failed"  # items that ended with an error

    def keeps(self, result: ItemResult) -> bool:
        if self is ResultFilter.OK:
            return result.ok
        if self is ResultFilter.FAILED:
            return not result.ok
        return True


T = TypeVar("T")


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return secrets.token_hex(16)


class _SentinelStagingChannel(StagingChannel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """The producer's staging channel on a broker behind Redis Sentinel."""


class _SentinelStagingTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = _SentinelStagingChannel


class Client:
    """Submits jobs to genq and reads them back. Needs Redis only: no torch, no model.

    Two Redis servers, or one: the broker's (GENQ_REDIS_URL: the queue, the pending lists,
    dead letters) and the results store (GENQ_RESULTS_URL, by default the same: jobs, results,
    workers). ``redis_url`` replaces GENQ_REDIS_URL (and is the results store unless
    GENQ_RESULTS_URL names another)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if redis_url is not None:
            self.settings = self.settings.model_copy(update={"redis_url": redis_url})
        self.results_endpoint: Endpoint = results_endpoint(self.settings)
        self.broker_endpoint: Endpoint = broker_endpoint(self.settings)
        self.split = stores_split(self.settings)
        self.store = SubmissionStore(
            self.results_endpoint.connect(),
            self.settings.result_ttl_s,
            self.settings.unfinished_ttl_s,
        )
        self.store.url_setting = self.results_endpoint.setting
        # The broker's Redis: the results store's client when they are one server.
        self.broker: redis.Redis = (
            self.broker_endpoint.connect() if self.split else self.store.redis
        )
        self.dead = DeadLetterStore(self.broker)
        self._sender: Sender | None = None
        self._replicas_checked: dict[int, tuple[float, int | None]] = {}
        self._feeder: Feeder | None = None

    # --- submission -----------------------------------------------------------------------
    def submit(
        self,
        items: Sequence[ItemInput],
        params: ParamsInput = None,
        *,
        metadata: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        expires_in_s: float | None = None,
        priority: Priority | str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Validate a job and enqueue it; return its id.

        ``items`` are prompts (strings) or objects with ``prompt``, optional ``custom_id`` and
        optional ``params`` overriding the job's ``params``. Every item and parameter is
        validated first: an invalid job raises :class:`InvalidJobError` and enqueues nothing.
        ``labels`` name the items in error messages (the CLI passes input line numbers).
        A retried submit with the same ``idempotency_key`` returns the first job's id.
        ``expires_in_s`` is a deadline: items not generated by then end as ``expired``.
        ``priority`` (high, normal, low; default GENQ_DEFAULT_PRIORITY) orders the job against
        others on every worker; ``tenant`` names whose share and quotas it counts against
        (docs/scheduling.md). A tenant at a quota raises :class:`QuotaExceededError`.
        """
        spec = self.validate(items, params, metadata=metadata, labels=labels)
        spec = with_job_options(
            spec,
            idempotency_key=idempotency_key,
            expires_in_s=expires_in_s,
            priority=priority.value if isinstance(priority, Priority) else priority,
        )
        record = {"tenant": keyspace.checked_id(tenant, "tenant name")} if tenant else None
        return self.submit_spec(spec, record)

    def validate(
        self,
        items: Sequence[ItemInput],
        params: ParamsInput = None,
        *,
        metadata: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> JobSpec:
        """Check a job without enqueueing it; raise :class:`InvalidJobError` listing problems."""
        return validate_job(items, params, self.settings, metadata=metadata, labels=labels)

    def submit_spec(self, spec: JobSpec, record_fields: Mapping[str, str] | None = None) -> str:
        """Enqueue an already validated :class:`JobSpec`; return the job id.

        A reused idempotency key returns its job's id if the content is the same, and raises
        :class:`IdempotencyConflictError` if it is not. ``record_fields`` go into the job's
        record as they are (the API's tenant and webhook flag).
        """
        job_id = new_job_id()
        job = NewJob.of(spec, record_fields, priority=Priority(self.settings.default_priority))
        # Every message is serialised before anything is written: a job that could not be
        # sent leaves nothing behind.
        messages = spec.messages(
            job_id, time.time(), self.settings.chunk_size_for(len(spec.items)), job.priority
        )
        claim = None
        if spec.idempotency_key is not None:
            # Keys are each tenant's own: another tenant's equal key names another job.
            key = spec.idempotency_key
            if job.record_fields.get("tenant"):
                key = f"{job.tenant}\0{key}"
            claim = (key, spec.fingerprint())
        return self.enqueue(job_id, job, messages, claim)

    def enqueue(
        self,
        job_id: str,
        job: NewJob,
        messages: Iterable[str],
        idempotency: tuple[str, str] | None = None,
    ) -> str:
        """Write the job's record, then send its ``messages`` (serialised :class:`WorkChunk`
        bodies, which may be produced while they are sent); return the job id.

        ``idempotency`` is (key, content fingerprint): a key already bound to a job of the same
        fingerprint returns that job's id and sends nothing. A failure while sending marks the
        job failed and raises :class:`EnqueueError`. A tenant over a quota raises
        :class:`QuotaExceededError` and nothing is written.
        """
        if idempotency is not None:
            bound = self._guard(lambda: self.store.bound_job(*idempotency))
            if bound is not None:  # a retried submit: its job exists, whatever the quotas
                return bound
        self._guard(lambda: self.store.create_job(job_id, job))
        if idempotency is not None:
            key, fingerprint = idempotency
            try:
                earlier = self._guard(
                    lambda: self.store.claim_idempotency_key(key, fingerprint, job_id)
                )
            except BaseException:
                self._guard(lambda: self.store.discard_job(job_id, job.tenant))
                raise
            if earlier is not None:
                self._guard(lambda: self.store.discard_job(job_id, job.tenant))
                return earlier
        try:
            self.sender.send(job_id, job, messages)
        except Exception as e:
            why = type(e).__name__
            if isinstance(e, redis.exceptions.RedisError):
                problem = self.broker_endpoint.explain(e)
                why = str(problem) if problem is not None else why
            message = f"could not enqueue the job ({why}); submit it again"
            try:
                self.store.fail(job_id, message)
                if self.split:  # no refill reads the record: what was staged goes now
                    self.feeder.drop(job_id)
            except redis.exceptions.RedisError:
                pass  # its messages are skipped by workers: the job has failed
            finally:
                raise EnqueueError(f"job {job_id}: {message}") from e
        # Returning the id is the promise that the job survives a Redis crash: with an
        # append-only file, wait until it holds the job (no-op on a server without one).
        self._guard(lambda: self.store.confirm_durable(job_id, DURABLE_SUBMIT_TIMEOUT_S))
        # ... and a failover: with replicas, until one has it (see docs/reliability.md).
        self._confirm_replicated(job_id)
        return job_id

    def _replicas_of(self, client: redis.Redis) -> int | None:
        """The server's online replicas, asked at most every REPLICA_CHECK_S: a submit (each
        single /v1/completions request is one) should not pay an INFO round trip each time."""
        now = time.monotonic()
        checked = self._replicas_checked.get(id(client))
        if checked is None or now - checked[0] > REPLICA_CHECK_S:
            checked = (now, connected_replicas(client))
            self._replicas_checked[id(client)] = checked
        return checked[1]

    def _confirm_replicated(self, job_id: str) -> None:
        """Wait until a replica of each server holds the job (when the server has replicas);
        with the stores split, until the broker's append-only file holds its messages too.
        :class:`DurabilityError` when a server could not confirm it in time."""
        sides = [(self.store.redis, self.results_endpoint, keyspace.durable_mark(), False)]
        if self.split:
            mark = keyspace.sched_mark(self.settings.queue, "durable")
            sides.append((self.broker, self.broker_endpoint, mark, True))
        for client, endpoint, mark, disk in sides:
            replicas = self._guard(partial(self._replicas_of, client), endpoint)
            confirm = partial(
                confirm_writes, client, mark, DURABLE_SUBMIT_TIMEOUT_S, disk=disk, replicas=replicas
            )
            confirmed = self._guard(confirm, endpoint)
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

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            self._sender = Sender(self.settings, self.feeder)
            if is_sentinel_url(self.settings.redis_url):
                # The sender's kombu channel stages messages; behind Sentinel it must find the
                # primary through them, as the workers' channels do.
                self._sender.celery.conf.broker_transport = _SentinelStagingTransport
        return self._sender

    @property
    def celery(self) -> Celery:
        """The Celery app this client sends with (genq's broker settings)."""
        return self.sender.celery

    @property
    def feeder(self) -> Feeder:
        if self._feeder is None:
            self._feeder = Feeder(self.broker, self.settings, jobs_here=not self.split)
        return self._feeder

    # --- reading --------------------------------------------------------------------------
    def status(self, job_id: str) -> JobInfo:
        """The job's status and counters (one Redis call, whatever its size)."""
        return self._guard(lambda: self.store.get(job_id))

    def jobs(self, limit: int = 20, query: JobQuery | None = None) -> list[JobInfo]:
        """The most recent jobs, newest first; with ``query``, those matching it (statuses,
        metadata), from the newest LIST_JOBS_SCAN_LIMIT jobs (:meth:`SubmissionStore.list_jobs`)."""
        return self._guard(lambda: self.store.list_jobs(limit, query))

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[ItemResult]:
        """One page of results in input order (items still running are skipped)."""
        return self._guard(lambda: self.store.results(job_id, offset, limit))

    def iter_results(
        self, job_id: str, page_size: int = 500, *, only: ResultFilter = ResultFilter.ALL
    ) -> Iterator[ItemResult]:
        """Every available result in input order, read page by page; ``only`` keeps those
        that ended with an error (``FAILED``) or without one (``OK``)."""
        total = self.status(job_id).total
        for offset in range(0, total, page_size):
            for result in self.results(job_id, offset, page_size):
                if only.keeps(result):
                    yield result

    def retry(self, job_id: str, *, idempotency_key: str | None = None) -> str | None:
        """Submit the failed items of an ended job again, as a new job; return its id, or
        None when the job has no failed items.

        Each item keeps its prompt, its custom_id (set explicitly, so results map back to the
        original items) and its own parameter overrides, on top of the original job's
        defaults; the new job's metadata is the original's plus ``retry_of=<job_id>``. Only
        items with an error result are retried: an item with no result at all (of a
        cancelled job, one that never started) cannot be. A job still queued or running
        raises :class:`JobNotFinishedError`.
        """
        info = self.status(job_id)
        if not info.is_terminal:
            raise JobNotFinishedError(
                f"job {job_id} is still {info.status.value} ({info.done}/{info.total} items "
                f"done): retry it once it has ended (genq wait {job_id})"
            )
        failed = list(self.iter_results(job_id, only=ResultFilter.FAILED))
        if not failed:
            return None
        # Plain objects, as a user submits them: validate_job reports any problem per item.
        items: list[ItemInput] = [
            {"prompt": r.prompt, "custom_id": r.custom_id, "params": r.params} for r in failed
        ]
        labels = [f"item {r.index} (custom_id {r.custom_id!r}) of job {job_id}" for r in failed]
        metadata = {**info.metadata, RETRY_OF: job_id}
        spec = validate_job(items, info.params, self.settings, metadata=metadata, labels=labels)
        spec = with_job_options(spec, idempotency_key=idempotency_key, priority=info.priority.value)
        record = {"tenant": info.tenant} if info.tenant else None
        return self.submit_spec(spec, record)

    def queue_workers(self) -> list[WorkerInfo]:
        """The live workers that consume this client's queue (GENQ_QUEUE): none means a job
        submitted now waits until one starts."""
        return [w for w in self.workers() if w.queue == self.settings.queue]

    def claim_no_append_only_notice(self) -> bool:
        """True when Redis keeps no append-only file (a restart would lose every accepted job)
        and no producer has said so yet for this Redis; the call marks it said. False when
        the server has one, or will not tell (INFO denied). The results store's;
        :meth:`claim_no_append_only_notices` asks both servers."""
        return self._guard(
            lambda: self.store.append_only() is False and self.store.claim_notice(NO_AOF_NOTICE)
        )

    def claim_no_append_only_notices(self) -> list[Endpoint]:
        """The servers (broker, results store: one when they are the same) that keep no
        append-only file and that no producer has warned of yet; the call marks them
        warned of."""
        found = [self.results_endpoint] if self.claim_no_append_only_notice() else []
        if self.split:
            mark = keyspace.sched_mark(self.settings.queue, "notice:" + NO_AOF_NOTICE)

            def claim() -> bool:
                fresh = append_only(self.broker) is False
                return fresh and bool(self.broker.set(mark, repr(time.time()), nx=True))

            if self._guard(claim, self.broker_endpoint):
                found.insert(0, self.broker_endpoint)
        return found

    def dead_letter_count(self) -> int:
        """How many dead letters are kept (at most DEAD_LETTER_LIMIT)."""
        return self._guard(self.dead.dead_letter_count, self.broker_endpoint)

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        poll_interval_s: float | None = None,
        on_progress: Callable[[JobInfo], None] | None = None,
    ) -> JobInfo:
        """Block until the job ends; raise :class:`WaitTimeoutError` after ``timeout_s``.

        Rides out a Redis restart: polling goes on while Redis is unreachable for up to
        WAIT_OUTAGE_TOLERANCE_S, then :class:`BrokerUnavailableError` is raised. A job that
        was there and then is not (Redis came back without its data, or was flushed) raises
        :class:`JobVanishedError`; one never found, :class:`JobNotFoundError`.
        """
        last: JobInfo = deque(polls(self, job_id, timeout_s, poll_interval_s, on_progress), 1)[0]
        return last  # the status read that found it ended

    def follow_results(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        poll_interval_s: float | None = None,
        on_progress: Callable[[JobInfo], None] | None = None,
        page_size: int = 500,
    ) -> Iterator[ItemResult]:
        """Every result in input order while the job runs, each as soon as it and every one
        before it are written; the iterator ends once the job has ended and every result is
        read (items that never got one, as in a cancelled job, are skipped). Waits as
        :meth:`wait` does: ``timeout_s``, outages, ``on_progress`` on each status read.

        Reading as results come overlaps the read with the generation: a 20,000-prompt
        job's last result is in hand sooner than by :meth:`wait`, then :meth:`iter_results`.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        statuses = polls(self, job_id, timeout_s, poll_interval_s, on_progress)

        def read(indexes: list[int]) -> dict[int, ItemResult]:
            return self._guard(lambda: self.store.results_at(job_id, indexes))

        return follow(statuses, read, page_size)

    def cancel(self, job_id: str) -> JobInfo:
        """Stop generating the job's remaining items; finished results stay readable."""
        info = self._guard(lambda: self.store.cancel(job_id))
        # Its pending messages are never queued.
        self._guard(lambda: self.feeder.drop(job_id), self.broker_endpoint)
        return info

    def queue(self) -> QueueView:
        """What waits on this client's queue: jobs with pending messages (by priority and
        tenant), and messages ready for the next worker."""
        return self._guard(self.feeder.view, self.broker_endpoint)

    def tenant_policies(self) -> dict[str, TenantPolicy]:
        """Every tenant with a weight or quotas set, by name."""
        return self._guard(lambda: read_policies(self.store.redis))

    def tenant_usage(self, tenant: str) -> TenantUsage:
        """What ``tenant``'s quotas count now (its unfinished jobs, their items not done)."""
        keyspace.checked_id(tenant, "tenant name")
        return self._guard(lambda: read_usage(self.store.redis, tenant))

    def set_tenant_policy(self, tenant: str, policy: TenantPolicy | None) -> None:
        """Set ``tenant``'s weight and quotas; None: back to weight 1 and no quotas. Written
        where quotas are counted (the results store) and, when that is another Redis, where
        the fair feeder reads weights (the broker's)."""
        keyspace.checked_id(tenant, "tenant name")
        sides = [(self.store.redis, self.results_endpoint)]
        if self.split:
            sides.append((self.broker, self.broker_endpoint))
        for client, endpoint in sides:
            if policy is None:
                self._guard(partial(remove_policy, client, tenant), endpoint)
            else:
                self._guard(partial(write_policy, client, tenant, policy), endpoint)

    def workers(self) -> list[WorkerInfo]:
        """Live workers and their counters (batch sizes included)."""
        return self._guard(lambda: self.store.workers(self.settings.heartbeat_s))

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """Queue messages workers refused (undecodable, foreign, not matching their job), newest
        first, each with its reason."""
        return self._guard(lambda: self.dead.dead_letters(offset, limit), self.broker_endpoint)

    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many there were."""
        return self._guard(self.dead.purge_dead_letters, self.broker_endpoint)

    def _guard(self, call: Callable[[], T], endpoint: Endpoint | None = None) -> T:
        """``call()``, a Redis error explained for ``endpoint``, the server it talks to (the
        results store unless said)."""
        try:
            return call()
        except redis.exceptions.RedisError as e:
            problem = (endpoint or self.results_endpoint).explain(e)
            if problem is None:
                raise
            raise problem from e
