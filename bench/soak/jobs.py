"""The soak's jobs: one big job by default, or --jobs N of mixed sizes, priorities and tenants.

With ``--jobs N`` (N > 1) the --items are split into one large job (half of them, three
quarters of two) and N - 1 smaller ones of varied sizes. Job k (1-based) has priority high,
normal, low, high... in turn and tenant ``soak-a``, ``soak-b`` in turn (``soak-b`` has
weight 2, so within a level it gets two items for each of ``soak-a``'s). The last one or two
jobs are *late*: submitted once 20% (then 35%) of all the items are done, while workers are
being killed, so the feeder's fairness decisions happen under the chaos (never while Redis
is down). Every prompt names its job and index, so a result given to the wrong job or item
shows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bench.workloads import WORDS
from genq.producer.client import Client
from genq.schema import PRIORITIES, JobInfo, Priority, TenantPolicy

# Prompt lengths in words (~4.5 tokens each with the tiny model's tokenizer): up to ~160
# tokens, so that 64 new tokens still fit its 256-token context.
PROMPT_WORDS = (1, 2, 4, 8, 16, 24, 32)
TENANTS = ("soak-a", "soak-b")
TENANT_WEIGHTS = {"soak-b": 2.0}  # soak-a keeps the default weight, 1
LATE_AT = (0.2, 0.35)  # shares of all the items done when the late jobs are submitted
SIZE_SHARES = (2, 3, 1)  # relative sizes of the small jobs, in turn


def make_prompts(n: int, seed: int, label: str = "") -> list[str]:
    """Unique prompts of varied lengths (each names its index, and its job's ``label``, so a
    mix-up shows)."""
    rng = random.Random(seed)
    return [
        f"{label}Item {i}: write about "
        + " ".join(rng.choice(WORDS) for _ in range(rng.choice(PROMPT_WORDS)))
        for i in range(n)
    ]


@dataclass
class Job:
    """One job of the soak: what it is, and (once submitted) what became of it."""

    number: int  # 1-based, in the order the jobs are planned
    prompts: list[str]
    priority: Priority | None = None  # None: the default one (the single job, as ever)
    tenant: str | None = None  # None: the default one
    late_at: float | None = None  # submitted once this share of all items is done
    job_id: str | None = None
    submit_t: float | None = None  # timeline seconds
    end_t: float | None = None  # when a sample first saw it ended
    info: JobInfo | None = None  # the latest sample's

    @property
    def items(self) -> int:
        return len(self.prompts)

    @property
    def submitted(self) -> bool:
        return self.job_id is not None

    @property
    def ended(self) -> bool:
        return self.info is not None and self.info.is_terminal

    @property
    def done(self) -> int:
        return self.info.done if self.info else 0

    @property
    def weight(self) -> float:
        return TENANT_WEIGHTS.get(self.tenant or "", 1.0)

    def describe(self) -> dict[str, object]:
        """What the job is (for events and the report)."""
        return {
            "job": self.number,
            "priority": (self.priority or Priority.NORMAL).value,
            "tenant": self.tenant or "default",
            "weight": self.weight,
            "items": self.items,
            "late": self.late_at is not None,
        }


def job_sizes(items: int, n: int) -> list[int]:
    """``items`` split into ``n`` jobs: the first holds about half (three quarters of two),
    the others the rest in SIZE_SHARES proportions (each at least 1)."""
    if n == 1:
        return [items]
    rest = items // 2 if n > 2 else items // 4
    shares = [SIZE_SHARES[i % len(SIZE_SHARES)] for i in range(n - 1)]
    small = [max(1, rest * s // sum(shares)) for s in shares]
    return [items - sum(small), *small]


def plan_jobs(items: int, n: int, seed: int) -> list[Job]:
    """The jobs of a run (see the module doc); one job of every item when ``n`` is 1."""
    if n == 1:
        return [Job(1, make_prompts(items, seed))]
    late = min(len(LATE_AT), max(1, (n - 1) // 2))
    jobs = []
    for i, size in enumerate(job_sizes(items, n)):
        number = i + 1
        jobs.append(
            Job(
                number,
                make_prompts(size, seed + i, label=f"Job {number} "),
                priority=PRIORITIES[i % len(PRIORITIES)],
                tenant=TENANTS[i % len(TENANTS)],
                late_at=LATE_AT[i - (n - late)] if i >= n - late else None,
            )
        )
    return jobs


def set_weights(client: Client, jobs: list[Job]) -> None:
    """Give the jobs' tenants their weights (before anything is submitted)."""
    for tenant in sorted({job.tenant for job in jobs if job.tenant in TENANT_WEIGHTS}):
        assert tenant is not None
        client.set_tenant_policy(tenant, TenantPolicy(weight=TENANT_WEIGHTS[tenant]))


def submit(client: Client, job: Job, params: dict[str, int], now: Callable[[], float]) -> str:
    """Submit ``job`` (the single job exactly as before: default priority and tenant), its
    ``submit_t`` the clock's ``now()`` once it is accepted. Several jobs carry an idempotency
    key, so a submit retried after a lost connection is one job."""
    if job.priority is None and job.tenant is None:
        job_id = client.submit(job.prompts, params)
    else:
        job_id = client.submit(
            job.prompts,
            params,
            priority=job.priority,
            tenant=job.tenant,
            idempotency_key=f"soak-job-{job.number}",
        )
    job.job_id, job.submit_t = job_id, now()
    return job_id
