"""The job contract, defined once and shared by the producer, the worker, the CLI and the API.

Serialisation happens here only: models go to Redis and Celery as ``model_dump_json`` strings and
come back through ``model_validate_json``.
"""

from __future__ import annotations

from genq.schema.chat import ChatMessage, ChatRole, chat_transcript
from genq.schema.chunks import ChunkItem, WorkChunk, WorkItem, chunk_messages, items_in_message
from genq.schema.job import JobItem, JobSpec, duplicate_custom_ids
from genq.schema.params import GenerationParams
from genq.schema.records import (
    TERMINAL,
    UNFINISHED,
    DeadLetter,
    JobInfo,
    JobStatus,
    WorkerInfo,
    from_epoch,
    utcnow,
)
from genq.schema.results import ErrorInfo, FinishReason, ItemErrorType, ItemResult, Timing, Usage
from genq.schema.scheduling import PRIORITIES, Priority, TenantPolicy

__all__ = [
    "PRIORITIES",
    "TERMINAL",
    "UNFINISHED",
    "ChatMessage",
    "ChatRole",
    "ChunkItem",
    "DeadLetter",
    "ErrorInfo",
    "FinishReason",
    "GenerationParams",
    "ItemErrorType",
    "ItemResult",
    "JobInfo",
    "JobItem",
    "JobSpec",
    "JobStatus",
    "Priority",
    "TenantPolicy",
    "Timing",
    "Usage",
    "WorkChunk",
    "WorkItem",
    "WorkerInfo",
    "chat_transcript",
    "chunk_messages",
    "duplicate_custom_ids",
    "from_epoch",
    "items_in_message",
    "utcnow",
]
