"""How jobs share the workers: the priority levels every worker serves in order, and a tenant's
weight and quotas (docs/scheduling.md)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from genq import settings as defaults


class Priority(str, Enum):
    """How urgent a job is: every worker serves the highest waiting priority first (a level
    passed over GENQ_STARVE_AFTER_MESSAGES times in a row gets the next message; see
    docs/scheduling.md)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent: the order levels are served in."""
        return PRIORITIES.index(self)


PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # most urgent first


class TenantPolicy(BaseModel):
    """A tenant's share of the workers and its quotas (docs/scheduling.md). Kept in Redis, so
    that every producer enforces the same quotas and every worker's refill the same weights."""

    model_config = ConfigDict(extra="forbid")

    # Within a priority, backlogged tenants get items in proportion to their weights.
    weight: float = Field(
        defaults.DEFAULT_TENANT_WEIGHT,
        strict=True,
        allow_inf_nan=False,
        ge=defaults.MIN_TENANT_WEIGHT,
        le=defaults.MAX_TENANT_WEIGHT,
    )
    # Items not yet done across the tenant's unfinished jobs (None: no limit).
    max_queued_items: int | None = Field(None, strict=True, ge=1)
    max_jobs_in_progress: int | None = Field(None, strict=True, ge=1)  # unfinished jobs
