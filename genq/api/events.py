"""What a job's end tells whom: the webhook event of a batch (``batch.completed``, ...) for its
tenant's ``webhook_url``, or of a native job (``job.completed``, ...) for its ``callback_url``.
The sender (:mod:`genq.api.webhooks`) asks this for each entry of the outbox."""

from __future__ import annotations

import time

from genq import keyspace
from genq.api.batch_output import PREFIX
from genq.api.batch_store import Batches
from genq.api.tenants import Tenants
from genq.api.webhooks import Delivery, Event, Later, event_id
from genq.settings import Settings

RECHECK_S = 1.0  # a batch still finalizing is looked at again this soon


class JobEvents:
    """Resolves an ended job to the event to deliver (implements the sender's Resolver)."""

    def __init__(self, batches: Batches, tenants: Tenants, settings: Settings) -> None:
        self.batches = batches
        self.tenants = tenants
        self.settings = settings
        self.redis = batches.redis

    def resolve(self, job_id: str) -> Delivery | Later | None:
        job: dict[str, str] = self.redis.hgetall(keyspace.job(job_id))  # type: ignore[assignment]
        tenant = self.tenants.by_name.get(job.get("tenant", ""))
        if not job or tenant is None or not tenant.webhook_secret:
            return None  # gone, or its tenant no longer configured
        finished = float(job.get("finished_at") or time.time())
        if job.get("batch"):
            if not tenant.webhook_url:
                return None
            batch = self.batches.view_any(job_id)  # writes the output files if they are due
            if batch is None:
                return None
            status = batch["status"]
            if status == "cancelling":
                return Later(max(finished + self.settings.cancel_settle_s, time.time() + RECHECK_S))
            if status in ("in_progress", "finalizing", "validating"):
                return Later(time.time() + RECHECK_S)
            kind, ident, url = f"batch.{status}", PREFIX + job_id, tenant.webhook_url
        else:
            url = job.get("callback_url") or ""
            if not url:
                return None
            kind, ident = f"job.{job['status']}", job_id
        event = Event(
            id=event_id(job_id, kind), type=kind, created_at=int(finished), data={"id": ident}
        )
        return Delivery(url=url, secret=tenant.webhook_secret, event=event)
