"""``genq queue`` and ``genq tenants``: the waiting work by priority and tenant, and each
tenant's weight and quotas (docs/scheduling.md)."""

from __future__ import annotations

import json

import click
from pydantic import ValidationError

from genq.producer.cli_options import client_from
from genq.producer.cli_output import emit_rows, print_note
from genq.schema import PRIORITIES, TenantPolicy


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> None:
    """Show the work waiting on the queue, per priority and tenant, in the order it is served.

    Pending items are those not yet handed to the Celery queue; "ready" messages are in it,
    for the next worker that takes one. On a pipe, one tab-separated line per priority and
    tenant: priority, tenant, jobs, items pending, weight.
    """
    client = client_from(ctx)
    view = client.queue()
    policies = client.tenant_policies()
    rows = []
    for priority in PRIORITIES:
        tenants = sorted({j.tenant for j in view.jobs if j.priority is priority})
        for tenant in tenants:
            jobs = [j for j in view.jobs if j.priority is priority and j.tenant == tenant]
            weight = policies[tenant].weight if tenant in policies else 1.0
            rows.append((priority.value, tenant, len(jobs), sum(j.items for j in jobs), weight))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queue": client.settings.queue,
                    "ready_messages": view.ready_messages,
                    "pending": [
                        {"priority": p, "tenant": t, "jobs": n, "items": i, "weight": w}
                        for p, t, n, i, w in rows
                    ],
                }
            )
        )
        return
    emit_rows(
        ("priority", "tenant", "jobs", "items pending", "weight"),
        [(p, t, str(n), str(i), f"{w:g}") for p, t, n, i, w in rows],
    )
    print_note(
        f"queue {client.settings.queue!r}: {view.ready_messages} message(s) ready for workers"
        + ("" if rows else "; nothing pending")
    )


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tenant.")
@click.pass_context
def tenants(ctx: click.Context, as_json: bool) -> None:
    """Show each tenant's weight and quotas, and what its quotas count now.

    Tenants get a policy from `genq api`'s tenants file (at its start) or `genq tenants set`;
    one without a policy has weight 1 and no quotas.
    """
    if ctx.invoked_subcommand is not None:
        return
    client = client_from(ctx)
    policies = client.tenant_policies()
    rows = []
    for name, policy in policies.items():
        usage = client.tenant_usage(name)
        rows.append((name, policy, usage))
    if as_json:
        for name, policy, usage in rows:
            click.echo(
                json.dumps(
                    {
                        "tenant": name,
                        **policy.model_dump(),
                        "jobs_in_progress": usage.jobs_in_progress,
                        "queued_items": usage.queued_items,
                    }
                )
            )
        return
    emit_rows(
        ("tenant", "weight", "jobs in progress", "queued items"),
        [
            (
                name,
                f"{policy.weight:g}",
                _of(usage.jobs_in_progress, policy.max_jobs_in_progress),
                _of(usage.queued_items, policy.max_queued_items),
            )
            for name, policy, usage in rows
        ],
    )
    if not rows:
        print_note("no tenant has a policy: every tenant has weight 1 and no quotas")


def _of(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit is not None else str(used)


@tenants.command("set")
@click.argument("name")
@click.option("--weight", type=float, help="Share of the workers [1].")
@click.option("--max-queued-items", type=int, help="Most items not yet done, over its jobs.")
@click.option("--max-jobs-in-progress", type=int, help="Most unfinished jobs.")
@click.option("--no-quotas", is_flag=True, help="Remove both quotas (before the options above).")
@click.pass_context
def set_policy(
    ctx: click.Context,
    name: str,
    weight: float | None,
    max_queued_items: int | None,
    max_jobs_in_progress: int | None,
    no_quotas: bool,
) -> None:
    """Change tenant NAME's weight or quotas; what is not given keeps its value."""
    client = client_from(ctx)
    current = client.tenant_policies().get(name, TenantPolicy())
    fields = current.model_dump()
    if no_quotas:
        fields |= {"max_queued_items": None, "max_jobs_in_progress": None}
    given = {
        "weight": weight,
        "max_queued_items": max_queued_items,
        "max_jobs_in_progress": max_jobs_in_progress,
    }
    fields |= {k: v for k, v in given.items() if v is not None}
    try:
        policy = TenantPolicy.model_validate(fields)
    except ValidationError as e:
        problem = e.errors(include_url=False)[0]
        option = "--" + str(problem["loc"][0]).replace("_", "-")
        raise click.BadParameter(problem["msg"], param_hint=option) from None
    client.set_tenant_policy(name, policy)


@tenants.command("remove")
@click.argument("name")
@click.pass_context
def remove_policy(ctx: click.Context, name: str) -> None:
    """Remove tenant NAME's policy: weight 1, no quotas."""
    client_from(ctx).set_tenant_policy(name, None)
