"""Every exception genq raises, named by intent. Messages say what was wrong and what to do."""

from __future__ import annotations


class GenqError(Exception):
    """Base class of every genq error."""


class InvalidJobError(GenqError, ValueError):
    """The job (input file, items or parameters) is invalid; nothing was enqueued."""


class InputFileError(InvalidJobError):
    """The input file could not be read or parsed; nothing was enqueued."""


class InvalidIdError(GenqError, ValueError):
    """A job or worker id that is not of genq's form (it could reach outside its key)."""


class ConfigError(GenqError, ValueError):
    """A GENQ_* setting or option has an invalid value."""


class JobNotFoundError(GenqError, LookupError):
    """No job with that id exists (never submitted, or expired after its TTL)."""


class EnqueueError(GenqError):
    """The job could not be handed to the queue; it is marked failed."""


class DurabilityError(EnqueueError):
    """Redis accepted the job but did not confirm it reached its append-only file in time."""


class BrokerUnavailableError(GenqError, ConnectionError):
    """Redis could not be reached."""


class RedisAccessError(BrokerUnavailableError):
    """Redis answered but refused genq (wrong credentials, an unverifiable certificate):
    retrying will not help; the configuration must change."""


class WaitTimeoutError(GenqError, TimeoutError):
    """The job did not end within the requested time; it keeps running."""


class ModelLoadError(GenqError):
    """The worker could not load the model or tokenizer."""


class WorkerConfigError(GenqError):
    """The worker was started with options it cannot honour."""


class WorkerCrashedError(GenqError):
    """The worker's engine loop failed; the worker stopped and handed its work back."""


class EmbeddedServerError(GenqError):
    """The embedded Redis-compatible server (``genq run``) could not start."""


class RefusedMessageError(GenqError):
    """A queue message a worker cannot use (unreadable, not genq's, or not matching its job's
    record): it goes to the dead-letter list (`genq dead`), and no job is changed."""


class IdempotencyConflictError(InvalidJobError):
    """An idempotency key already names a job with different content; nothing was enqueued."""


class RedisUrlError(ConfigError):
    """GENQ_REDIS_URL cannot be used as written (a scheme genq does not know, a password with
    characters that must be percent-encoded, a database that is not a number): found in the
    URL's text, before anything connects."""


class JobVanishedError(JobNotFoundError):
    """A job that was being waited on is no longer in Redis: Redis lost its data (it restarted
    without an append-only file, or was flushed). The job must be submitted again."""


class JobNotFinishedError(GenqError):
    """The operation needs a job that has ended (e.g. `genq retry`), and it is still running."""


class MissingExtraError(ConfigError):
    """A command needs packages this install lacks (the worker's stack is an extra:
    ``pip install 'genq[worker]'``)."""


class WebhookTargetError(ConfigError):
    """A webhook URL genq will not call: not http(s), unresolvable, or (unless
    GENQ_WEBHOOK_ALLOW_PRIVATE=1) on a private, loopback or link-local address."""


class ApiConfigError(ConfigError):
    """`genq api` cannot start as configured (no API keys, an unreadable tenants file)."""


class QuotaExceededError(GenqError):
    """A tenant is at one of its quotas (jobs in progress, queued items): nothing was enqueued;
    submitting again once some of its work has ended will succeed."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
