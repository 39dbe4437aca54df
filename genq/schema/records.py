"""What is kept of jobs and workers as they run: a job's status and counters (:class:`JobInfo`), a
worker's heartbeat (:class:`WorkerInfo`), a dead-lettered message (:class:`DeadLetter`), and the
datetime helpers they are read and written with."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, Field

from genq import settings as defaults
from genq.schema.params import GenerationParams
from genq.schema.scheduling import Priority


class JobStatus(str, Enum):
    """Lifecycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # every item ended, with a result or a per-item error
    FAILED = "failed"  # the job could not run at all (e.g. it could not be enqueued)
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its deadline (expires_in_s) passed first; finished results are kept


TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
UNFINISHED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class JobInfo(BaseModel):
    """A job's status and counters, read in O(1) Redis calls."""

    id: str
    status: JobStatus
    total: int
    completed: int = 0  # items with a result and no error
    failed: int = 0  # items that ended with an error
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    metadata: dict[str, str] = Field(default_factory=dict)
    error: str | None = None  # why the whole job failed, when status is failed
    expires_at: datetime | None = None  # the job's deadline, when it has one
    tenant: str | None = None  # the API tenant that owns it (None: submitted from Redis directly)
    priority: Priority = Priority.NORMAL

    @property
    def done(self) -> int:
        return self.completed + self.failed

    @property
    def pending(self) -> int:
        return max(self.total - self.done, 0)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class WorkerInfo(BaseModel):
    """A worker's identity, configuration and counters, as it reports them in its heartbeat."""

    id: str
    hostname: str
    pid: int
    engine: str
    model: str
    device: str
    max_batch_size: int
    queue: str = defaults.DEFAULT_QUEUE  # the Celery queue it consumes
    started_at: datetime
    last_seen: datetime
    batches: int = 0
    items: int = 0
    tokens: int = 0
    busy_s: float = 0.0  # wall time spent in batches (utilisation: its growth over wall time)
    batch_sizes: dict[int, int] = Field(default_factory=dict)  # sequences per batch -> count


class DeadLetter(BaseModel):
    """A queue message no worker could use, kept (bounded) with why it was refused."""

    at: datetime
    reason: str  # one line: what was wrong with the message
    queue: str
    worker_id: str | None = None
    task: str | None = None  # the task name the message asked for, when it had one
    job_id: str | None = None  # the job it named, when it named one
    message: str  # the raw message (its first DEAD_LETTER_MESSAGE_CHARS characters)
    message_bytes: int  # the raw message's full size


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def from_epoch(value: str | bytes | float | None) -> datetime | None:
    if value in (None, "", b""):
        return None
    return datetime.fromtimestamp(float(value), tz=timezone.utc)  # type: ignore[arg-type]
