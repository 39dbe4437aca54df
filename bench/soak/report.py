"""The verdict: every job's results read back and checked (bench.soak.checks: none lost, none
twice, none mixed up, in input order), nothing left pending, the figures of the run, and what
is written: the printed report, soak.json and rss.png.

The top-level figures are the job's with one job (as ever) and sums over the jobs with
several, whose index lists then name ``job:index``; ``jobs`` has each job's own."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import click

from bench.soak.checks import JobCheck, check_job, retry
from bench.soak.run import Soak
from bench.soak.timeline import round2
from genq import leases


def indexes(checks: list[JobCheck], pick: str) -> list[int | str]:
    """One kind of problem's indexes over the jobs: plain with one job, ``job:index`` with
    several (at most 100)."""
    if len(checks) == 1:
        return list(getattr(checks[0], pick))[:100]
    tagged: list[int | str] = [f"{c.job.number}:{i}" for c in checks for i in getattr(c, pick)]
    return tagged[:100]


def verify(soak: Soak) -> dict[str, Any]:
    """Read every job's results back and check them; the figures of the run (``ok`` is the
    verdict)."""
    client = soak.client
    checks = [check_job(client, job) for job in soak.jobs]
    r = client.store.redis
    queued = retry(lambda: client.store.queue_length(soak.settings.queue))
    unacked = retry(lambda: r.zcard(leases.unacked_index_key()))
    pending = retry(lambda: client.queue().jobs)

    total = sum(c.total for c in checks)
    results = [res for c in checks for res in c.results]
    results_count = sum(len(c.seen) for c in checks)
    duplicates = {k: sum(c.duplicates[k] for c in checks) for k in checks[0].duplicates}
    errors = Counter(res.error.type for res in results if res.error is not None)
    by_worker = Counter(res.worker_id or "?" for res in results)
    # Worker counters count generated items (rejected ones, e.g. too long, are not): the
    # excess over the results each worker holds is work done again after a lost worker
    # (a result written twice keeps the first). Counts a killed worker moved in its last
    # second are missed: a lower bound.
    generated_ok = Counter(res.worker_id or "?" for res in results if res.ok)
    counts = soak.sampler.counts
    generated = {wid: count.total for wid, count in counts.items()}
    excess = {
        wid: generated.get(wid, 0) - generated_ok.get(wid, 0)
        for wid in set(generated) | set(generated_ok)
    }
    reruns_by_worker = {wid: n for wid, n in excess.items() if n > 0}
    uncounted = -sum(n for n in excess.values() if n < 0)
    runs = soak.workers.runs
    lost = sum(len(c.lost_indexes) for c in checks)
    duplicated = sum(duplicates.values())
    mismatched = sum(len(c.mismatched) for c in checks)
    completed = all(c.completed for c in checks)
    statuses = {c.info.status.value if c.info else "missing" for c in checks}
    ok = (
        completed
        and not soak.timed_out
        and lost == 0
        and duplicated == 0
        and not mismatched
        and not any(c.problems() for c in checks)
        and not pending
    )
    elapsed, chaos, sampler = soak.elapsed_s, soak.chaos, soak.sampler
    return {
        "ok": ok,
        "job_id": soak.job_id,
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "timed_out": soak.timed_out,
        "elapsed_s": round(elapsed, 1),
        "items_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
        "longest_stall_s": sampler.longest_stall(soak.submit_t),
        "items": total,
        "completed": sum(c.info.completed for c in checks if c.info),
        "failed": sum(c.info.failed for c in checks if c.info),
        "results": results_count,
        "results_hash_fields": sum(len(c.fields) for c in checks),
        "lost": lost,
        "lost_indexes": indexes(checks, "lost_indexes"),
        "duplicates": duplicated,
        "duplicate_checks": duplicates,
        "duplicate_indexes": indexes(checks, "dup_indexes"),
        "stray_result_fields": indexes(checks, "stray_fields"),
        "mismatched": mismatched,
        "mismatched_indexes": indexes(checks, "mismatched"),
        "failed_by_error_type": dict(errors),
        "results_by_worker": dict(by_worker),
        "generated_estimate": sum(generated.values()),
        "reruns_estimate": sum(reruns_by_worker.values()),
        "reruns_by_worker": reruns_by_worker,
        "results_missing_from_counters": uncounted,
        "unlisted_worker_events": sum(run.unlisted_events for run in runs),
        "worker_counter_resets": sum(count.resets for count in counts.values()),
        "kills": dict(soak.workers.kills),
        "worker_stops": sum(soak.workers.kills.values()),
        "workers_started": len(runs),
        "unexpected_worker_exits": soak.workers.unexpected_exits,
        "redis_restarts": 1 if chaos.redis_restarted else 0,
        "redis_killed_at_s": round2(chaos.redis_killed_t),
        "redis_down_s": chaos.redis_down_s(),
        "broker_outages_s": [[round2(a), round2(b)] for a, b in sampler.broker_outages],
        "job_missing_samples": sampler.job_missing_samples,
        "left_in_queue": queued,
        "left_unacked": unacked,
        "left_pending_jobs": [
            {"job_id": j.job_id, "priority": j.priority.value, "tenant": j.tenant, "items": j.items}
            for j in pending
        ],
        "workers": [run.summary() for run in runs],
        "jobs": [c.figures() for c in checks],
    }


def write_json(soak: Soak, figures: dict[str, Any], path: Path) -> None:
    """soak.json: the figures, the settings, the timeline and every sample."""
    opts = soak.opts
    figures["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    figures["model"] = opts.model or "tiny random GPT-2 (built for the run)"
    figures["cpus"] = os.cpu_count()
    path.write_text(
        json.dumps(
            {**figures, "timeline": soak.timeline.events, "samples": soak.sampler.samples},
            indent=1,
        )
    )


def chart(soak: Soak, path: Path) -> bool:
    """RSS of every worker over time, with items done and the chaos events; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    samples, runs = soak.sampler.samples, soak.workers.runs
    done = [(s["t"], s["completed"] + s["failed"]) for s in samples if "completed" in s]
    if done:
        top.plot(*zip(*done, strict=True), color="#4c72b0", label="all jobs")
    if len(soak.jobs) > 1:
        for job in soak.jobs:
            key = str(job.number)
            mine = [
                (s["t"], s["jobs"][key][1] + s["jobs"][key][2])
                for s in samples
                if key in s.get("jobs", {})
            ]
            if mine:
                top.plot(*zip(*mine, strict=True), linewidth=1, label=f"job {key}")
        top.legend(fontsize="small")
    top.set_ylabel("items done")
    for run in runs:
        if run.rss:
            bottom.plot(*zip(*run.rss, strict=True), label=run.name, linewidth=1)
    bottom.set_ylabel("worker RSS (MiB)")
    bottom.set_xlabel("seconds since the soak started")
    styles = {"sigkill": "#c44e52", "sigterm": "#dd8452", "redis_sigkill": "black"}
    for e in soak.timeline.events:
        if e["event"] in styles:
            for ax in (top, bottom):
                ax.axvline(e["t"], color=styles[e["event"]], linewidth=0.8, alpha=0.6)
    top.set_title("soak: red SIGKILL, orange SIGTERM, black Redis SIGKILL")
    if len(runs) <= 20:
        bottom.legend(fontsize="small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(figures: dict[str, Any]) -> None:
    """Print the verdict and the figures."""
    f = figures
    verdict = "PASS" if f["ok"] else "FAIL"
    echo = click.echo
    echo(
        f"\nsoak {verdict}: job {f['job_id']} {f['status']} in {f['elapsed_s']} s "
        f"({f['items_per_s']} items/s; longest stall {f['longest_stall_s']} s)"
    )
    echo(
        f"  items {f['items']:,}: results {f['results']:,}, completed {f['completed']:,}, "
        f"failed {f['failed']:,} {f['failed_by_error_type'] or ''}".rstrip()
    )
    echo(f"  lost {f['lost']}   duplicates {f['duplicates']}   mismatched {f['mismatched']}")
    echo(
        f"  re-runs {f['reruns_estimate']:,} (items counted by workers beyond their results; "
        f"a lower bound: {f['results_missing_from_counters']:,} results were never counted)"
    )
    echo(
        f"  worker counters reset {f['worker_counter_resets']} time(s); serving workers "
        f"missing from `genq workers` {f['unlisted_worker_events']} time(s)"
    )
    echo(
        f"  worker stops {f['worker_stops']} {f['kills']}, workers started "
        f"{f['workers_started']}, unexpected exits {f['unexpected_worker_exits']}"
    )
    echo(
        f"  redis restarts {f['redis_restarts']} (killed at {f['redis_killed_at_s']} s, "
        f"down {f['redis_down_s']} s); left in queue {f['left_in_queue']}, "
        f"unacked {f['left_unacked']}, pending jobs {len(f['left_pending_jobs'])}"
    )
    report_jobs(f["jobs"])
    echo("  worker  pid      ready_s  stopped             RSS MiB ready/peak/final  results")
    for w in f["workers"]:
        stop = f"{w['stop_signal']}@{w['stop_t']}" if w["stop_signal"] else "-"
        stop = "steady" if w["steady"] and not w["stop_signal"] else stop
        results = f["results_by_worker"].get(w["worker_id"], 0)
        rss = f"{w['rss_at_ready_mb']}/{w['rss_peak_mb']}/{w['rss_final_mb']}"
        echo(
            f"  {w['name']:<7} {w['pid']:<8} {w['ready_t']!s:<8} {stop:<19} {rss:<25} {results:>7}"
        )


def report_jobs(jobs: list[dict[str, Any]]) -> None:
    """One line per job: what it was, when it ended after its submit, and its verdict."""
    echo = click.echo
    echo(
        "  job  priority  tenant   weight  items  submit_s  ended_after_s  took_s  status     "
        "done/failed  verdict"
    )
    for j in jobs:
        late = "*" if j["late"] else " "
        verdict = "ok" if j["ok"] else "FAIL: " + ", ".join(j["problems"])
        echo(
            f"  {j['job']:<3}{late} {j['priority']:<9} {j['tenant']:<8} {j['weight']:<7g} "
            f"{j['items']:<6} {j['submitted_at_s']!s:<9} {j['finished_after_s']!s:<14} "
            f"{j['took_s']!s:<7} {j['status']:<10} {j['completed']}/{j['failed']:<9} {verdict}"
        )
    if any(j["late"] for j in jobs):
        echo("  (* submitted during the run)")
