"""The verdict: every item's result read back and checked (none lost, none twice, none mixed
up), the figures of the run, and what is written: the printed report, soak.json and rss.png."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis

from bench.soak.run import Soak
from bench.soak.timeline import round2
from genq import keyspace
from genq.errors import BrokerUnavailableError, JobNotFoundError
from genq.schema import ItemResult, JobStatus

RETRY_S = 60.0  # how long end-of-run reads keep retrying an unreachable Redis

T = TypeVar("T")


def retry(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            return call()
        except (BrokerUnavailableError, redis.exceptions.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def verify(soak: Soak) -> dict[str, Any]:
    """Read every result back and check it; the figures of the run (``ok`` is the verdict)."""
    assert soak.job_id is not None
    job_id, prompts, client = soak.job_id, soak.prompts, soak.client
    total = len(prompts)
    r = client.store.redis
    try:
        info = retry(lambda: client.status(job_id))
        results: list[ItemResult] = retry(lambda: list(client.iter_results(job_id)))
        fields = [str(k) for k in retry(lambda: r.hkeys(keyspace.results(job_id)))]
    except JobNotFoundError:
        info, results, fields = None, [], []
    queued = retry(lambda: r.llen(keyspace.celery_queue(soak.settings.queue)))
    unacked = retry(lambda: r.zcard(keyspace.celery_unacked_index()))

    seen = Counter(res.index for res in results)
    field_counts = Counter(fields)
    expected = {str(i) for i in range(total)}
    stray_fields = sorted(set(field_counts) - expected)
    lost_indexes = sorted(i for i in range(total) if i not in seen)
    dup_indexes = sorted(i for i, c in seen.items() if c > 1)
    counted = info.completed + info.failed if info else 0
    duplicates = {
        "indexes_seen_twice": len(dup_indexes),
        "counters_over_results": max(0, counted - len(seen)),
        "results_fields_over_total": max(0, len(fields) - total),
    }
    mismatched = [
        res.index
        for res in results
        if res.index >= total or res.prompt != prompts[res.index] or res.custom_id != str(res.index)
    ]
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
    lost = len(lost_indexes)
    duplicated = sum(duplicates.values())
    completed = info is not None and info.status is JobStatus.COMPLETED
    ok = completed and not soak.timed_out and lost == 0 and duplicated == 0 and not mismatched
    elapsed, chaos, sampler = soak.elapsed_s, soak.chaos, soak.sampler
    return {
        "ok": ok,
        "job_id": job_id,
        "status": info.status.value if info else "missing",
        "timed_out": soak.timed_out,
        "elapsed_s": round(elapsed, 1),
        "items_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
        "longest_stall_s": sampler.longest_stall(soak.submit_t),
        "items": total,
        "completed": info.completed if info else 0,
        "failed": info.failed if info else 0,
        "results": len(seen),
        "results_hash_fields": len(fields),
        "lost": lost,
        "lost_indexes": lost_indexes[:100],
        "duplicates": duplicated,
        "duplicate_checks": duplicates,
        "duplicate_indexes": dup_indexes[:100],
        "stray_result_fields": stray_fields[:100],
        "mismatched": len(mismatched),
        "mismatched_indexes": mismatched[:100],
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
        "workers": [run.summary() for run in runs],
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
        top.plot(*zip(*done, strict=True), color="#4c72b0")
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
        f"unacked {f['left_unacked']}"
    )
    echo("  worker  pid      ready_s  stopped             RSS MiB ready/peak/final  results")
    for w in f["workers"]:
        stop = f"{w['stop_signal']}@{w['stop_t']}" if w["stop_signal"] else "-"
        stop = "steady" if w["steady"] and not w["stop_signal"] else stop
        results = f["results_by_worker"].get(w["worker_id"], 0)
        rss = f"{w['rss_at_ready_mb']}/{w['rss_peak_mb']}/{w['rss_final_mb']}"
        echo(
            f"  {w['name']:<7} {w['pid']:<8} {w['ready_t']!s:<8} {stop:<19} {rss:<25} {results:>7}"
        )
