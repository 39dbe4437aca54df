"""The Redis keyspace: every key genq (and its Celery broker) uses is built here, under ``genq:``.

Two servers, or one: ``genq:celery:*`` and ``genq:sched:*`` live on the broker's Redis
(GENQ_REDIS_URL), every other key on the results store (GENQ_RESULTS_URL, by default the same
Redis); tenants' policies are copied to the broker's when they are two (the refill reads the
weights there). docs/reliability.md#two-redis-servers-and-redis-sentinel.

genq:job:{id}               hash   status, counters, timestamps, params/metadata (JSON)
genq:job:{id}:results       hash   item index -> ItemResult JSON (first write wins)
genq:job:{id}:attempts      hash   item index -> times a worker started it (dropped at the end)
genq:jobs                   zset   job ids by creation time
genq:deadlines              zset   job id -> deadline, of jobs with a webhook: swept by `genq api`,
                                   so that a job nobody looks at still ends (and says so) on time
genq:workers                zset   worker ids by last heartbeat
genq:worker:{id}            hash   WorkerInfo fields and counters
genq:worker:{id}:batches    hash   sequences per batch -> number of batches
genq:celery:*                      kombu's queues and bookkeeping (via global_keyprefix)
genq:celery:{q}\x06\x163     list   the queue's normal and low messages (kombu's list for message
                                   priority 3; genq:celery:{q} holds the urgent ones, popped first)
genq:celery:unacked         hash   delivery tag -> message a worker holds (kombu's ack emulation;
                                   named in genq.leases, with everything else about leases)
genq:celery:unacked_index   zset   delivery tag -> lease time: renewed by the holder's heartbeat,
                                   requeued by any worker once older than GENQ_LEASE_S
genq:celery:dead            list   DeadLetter JSON, newest first: messages no worker could use
                                   (bounded to DEAD_LETTER_LIMIT entries)
genq:notice:{name}          string a warning already shown once for this Redis (e.g. no AOF)
genq:file:{id}              hash   an API file's metadata (tenant, bytes, lines, line errors)
genq:file:{id}:data         list   the file's bytes, in chunks of about FILE_CHUNK_BYTES
genq:batch:{job id}         hash   the OpenAI batch view of a job (endpoint, files, timestamps)
genq:batch:{job id}:ids     list   custom_id of every line, in input order (for the error file)
genq:batch:{job id}:finalize string lock: one process writes the batch's output files
genq:tenant:{t}:files       zset   a tenant's file ids by creation time
genq:tenant:{t}:batches     zset   a tenant's batch ids by creation time
genq:tenant:{t}:jobs        zset   a tenant's native-API job ids by creation time
genq:tenant:{t}:policy      hash   a tenant's scheduling weight and quotas (written by `genq api`
                                   from its tenants file, or by `genq tenants set`)
genq:tenant-policies        set    names of the tenants with a policy
genq:tenant:{t}:unfinished  set    the tenant's jobs not yet ended (what its quotas count)
genq:sched:{q}:pending:{id} list   a job's queue messages not yet given to the Celery queue,
                                   each "items|kombu payload" (docs/scheduling.md)
genq:sched:{q}:active       hash   job id -> "priority<TAB>tenant", of jobs with pending messages
genq:sched:{q}:queued       hash   job id -> items pending (not yet in the Celery queue)
genq:sched:{q}:ring:{p}:{t} list   a tenant's jobs at priority p, served round-robin
genq:sched:{q}:tenants:{p}  zset   tenants with pending work at priority p -> virtual time
genq:sched:{q}:clock:{p}    string the virtual time of the last tenant served at priority p
genq:sched:{q}:skipped      hash   priority -> messages dispatched in a row while it waited
genq:sched:{q}:ready:urgent list   item counts of the messages the feeder put on the Celery
genq:sched:{q}:ready:other  list   queue's urgent / other list, newest first (its depth in items)
genq:sched:{q}:staged:{id}  string with the results on another Redis: the job's last staging
                                   number (else the record's `staged` field); a day
genq:sched:{q}:dropped:{id} string with the results on another Redis: the job was cancelled, its
                                   later stagings are refused; a day
genq:sched:{q}:durable      string time of the last submit confirmed on the broker (WAITAOF/WAIT)
genq:sched:{q}:notice:{n}   string a one-time warning given for the broker's Redis
genq:durable                string time of the last submit confirmed on a replica (WAIT 1)
genq:durable:worker         string written by a worker before it waits for a replica of its
                                   results (results on their own Redis, with replicas)
genq:http-idempotency:{h}   string an Idempotency-Key's request fingerprint and first answer
genq:webhooks:outbox        zset   job id -> when its end event is due (written by the scripts
                                   that end a job, atomically with the end)
genq:webhooks:state         hash   job id -> delivery attempts so far (JSON)
genq:webhooks:failed        list   events given up on after WEBHOOK_RETRY_FOR_S (newest first)
"""

from __future__ import annotations

import hashlib
import re

from genq.errors import InvalidIdError

PREFIX = "genq"
SEPARATOR = ":"

ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,128}$"
_ID = re.compile(ID_PATTERN)


def namespace(*parts: str) -> str:
    """Build a key under the genq prefix. The one place keys are assembled."""
    return SEPARATOR.join((PREFIX, *parts))


def checked_id(value: str, what: str = "job id") -> str:
    """Refuse ids that could reach outside their key (separators, wildcards, whitespace)."""
    if not _ID.match(value):
        raise InvalidIdError(
            f"invalid {what} {value[:80]!r}: ids are 1-128 letters, digits and _ . @ - "
            "(a job id is what `genq submit` printed)"
        )
    return value


def job(job_id: str) -> str:
    return namespace("job", checked_id(job_id))


def results(job_id: str) -> str:
    return namespace("job", checked_id(job_id), "results")


def attempts(job_id: str) -> str:
    return namespace("job", checked_id(job_id), "attempts")


def idempotency(key: str) -> str:
    """Where a client's idempotency key maps to its job id (hashed: keys are arbitrary text)."""
    return namespace("idempotency", hashlib.sha256(key.encode()).hexdigest()[:40])


def jobs_index() -> str:
    return namespace("jobs")


def deadlines() -> str:
    return namespace("deadlines")


def workers_index() -> str:
    return namespace("workers")


def worker(worker_id: str) -> str:
    return namespace("worker", checked_id(worker_id, "worker id"))


def worker_batches(worker_id: str) -> str:
    return namespace("worker", checked_id(worker_id, "worker id"), "batches")


def celery_prefix() -> str:
    """Prefix kombu puts before every key of the Celery broker (its ``global_keyprefix``)."""
    return namespace("celery") + SEPARATOR


def celery_queue(queue: str) -> str:
    """Full name of a Celery queue's list (messages waiting for any worker)."""
    return celery_prefix() + queue


# kombu's Redis transport keeps a queue's messages of priority p > 0 on the queue's list named
# with this separator and p, and its consumer pops the lists in order of p (0 first).
KOMBU_PRIORITY_SEP = "\x06\x16"
URGENT_MESSAGE_PRIORITY = 0  # high work: on the queue's own list, popped first
OTHER_MESSAGE_PRIORITY = 3  # normal and low work (the feeder has ordered them already)


def celery_queue_lists(queue: str) -> tuple[str, str]:
    """A Celery queue's two lists in genq's use: urgent messages, then the others."""
    base = celery_queue(queue)
    return base, f"{base}{KOMBU_PRIORITY_SEP}{OTHER_MESSAGE_PRIORITY}"


def celery_dead() -> str:
    """The dead-letter list: messages a worker refused (undecodable, foreign, not matching their
    job), each with its reason. Under kombu's prefix, beside the queues, but never consumed."""
    return celery_prefix() + "dead"


def notice(name: str) -> str:
    """Marks a one-time warning (``name``) as already given for this Redis."""
    return namespace("notice", checked_id(name, "notice name"))


def file(file_id: str) -> str:
    return namespace("file", checked_id(file_id, "file id"))


def file_data(file_id: str) -> str:
    return namespace("file", checked_id(file_id, "file id"), "data")


def batch(job_id: str) -> str:
    return namespace("batch", checked_id(job_id, "batch id"))


def batch_custom_ids(job_id: str) -> str:
    return namespace("batch", checked_id(job_id, "batch id"), "ids")


def batch_finalize_lock(job_id: str) -> str:
    return namespace("batch", checked_id(job_id, "batch id"), "finalize")


def tenant_files(tenant: str) -> str:
    return namespace("tenant", checked_id(tenant, "tenant name"), "files")


def tenant_batches(tenant: str) -> str:
    return namespace("tenant", checked_id(tenant, "tenant name"), "batches")


def tenant_jobs(tenant: str) -> str:
    return namespace("tenant", checked_id(tenant, "tenant name"), "jobs")


def tenant_prefix() -> str:
    """Start of every per-tenant key (the scripts that count quotas build keys from it)."""
    return namespace("tenant") + SEPARATOR


def tenant_policy(tenant: str) -> str:
    return namespace("tenant", checked_id(tenant, "tenant name"), "policy")


def tenant_policies() -> str:
    """The names of the tenants that have a policy (weight or quotas)."""
    return namespace("tenant-policies")


def tenant_unfinished(tenant: str) -> str:
    return namespace("tenant", checked_id(tenant, "tenant name"), "unfinished")


def job_prefix() -> str:
    """Start of every job record's key (``job_prefix() + id`` is :func:`job`)."""
    return namespace("job") + SEPARATOR


def sched_prefix(queue: str) -> str:
    """Start of the fair feeder's keys for ``queue`` (the feeder's script builds the rest: which
    job's list it reads next is known only inside the script)."""
    return namespace("sched", checked_id(queue, "queue name")) + SEPARATOR


def sched_pending(queue: str, job_id: str) -> str:
    """A job's messages not yet given to the Celery queue (built by the feeder's script from
    :func:`sched_prefix`; named here for readers such as benchmarks)."""
    return sched_prefix(queue) + "pending:" + checked_id(job_id)


def durable_mark(who: str = "") -> str:
    """What a wait for a replica (or the append-only file) writes first on the results store
    (WAIT covers a connection's writes); ``who``: "worker" for a worker's."""
    return namespace("durable", checked_id(who, "mark name")) if who else namespace("durable")


def sched_mark(queue: str, name: str) -> str:
    """A mark of the broker's side (``durable``, ``notice:{name}``), beside the feeder's keys."""
    return sched_prefix(queue) + name


def http_idempotency(tenant: str, key: str) -> str:
    """Where an HTTP Idempotency-Key of a tenant is remembered (hashed: keys are any text)."""
    digest = hashlib.sha256(f"{tenant}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()
    return namespace("http-idempotency", digest[:40])


def webhook_outbox() -> str:
    return namespace("webhooks", "outbox")


def webhook_state() -> str:
    return namespace("webhooks", "state")


def webhook_failed() -> str:
    return namespace("webhooks", "failed")
