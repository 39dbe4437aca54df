"""What stored results cost in Redis memory, and what reduces it.

Measured: jobs go through real workers (the ``null`` engine, or :mod:`bench.scaling.text_engine`
for outputs of a chosen length); after the last result is read, INFO ``used_memory`` against
before the job, and ``MEMORY USAGE`` (every element counted) of the job's keys. Extrapolated:
1M results as that many times the measured bytes per result. Re-encodings genq does not write
(compact JSON, zlib) are measured on a scratch hash holding the same results re-encoded.
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis

from bench.scaling.probes import client_for, prompts, run_job, unique_queue, workers
from genq import keyspace

BATCH_SIZE = 256  # fast: the stored bytes do not depend on it (beyond a digit of timing)
SAMPLE = 10_000  # results re-encoded on the scratch hash
# Short names a compact encoding could give ItemResult's fields (an estimate of "shorter keys").
SHORT = {
    "custom_id": "c",
    "index": "i",
    "prompt": "p",
    "outputs": "o",
    "finish_reason": "f",
    "finish_reasons": "fs",
    "usage": "u",
    "prompt_tokens": "pt",
    "completion_tokens": "ct",
    "error": "e",
    "timing": "t",
    "enqueued_at": "q",
    "started_at": "s",
    "finished_at": "d",
    "batch_size": "b",
    "worker_id": "w",
    "params": "x",
}


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def key_bytes(r: redis.Redis, key: str) -> int:
    return int(r.memory_usage(key, samples=0) or 0)


def stored_job(
    r: redis.Redis,
    url: str,
    items: int,
    output_chars: int | None,
    log_dir: Path,
    tag: str,
    jobs: int = 1,
) -> dict[str, Any]:
    """``jobs`` jobs of ``items`` items each through one worker (``output_chars`` None: the
    plain ``null`` engine, empty outputs; else :mod:`~bench.scaling.text_engine`), on a flushed
    Redis; what their results occupy once every result is read."""
    r.flushall()
    queue = unique_queue(f"mem-{tag}")
    env = {"GENQ_NULL_BATCH_MS": "0", "GENQ_MAX_BATCH_SIZE": str(BATCH_SIZE)}
    module = "genq"
    if output_chars is not None:
        env["BENCH_OUTPUT_CHARS"] = str(output_chars)
        module = "bench.scaling.text_engine"
    with workers(1, url, queue, env, log_dir, module=module):
        client = client_for(url, queue, chunk_size=None)
        run_job(client, prompts(32, seed=1))  # scripts loaded, connections open
        time.sleep(0.2)
        before = used_memory(r)
        keys_before = set(r.scan_iter(count=1000))
        started = time.perf_counter()
        ids = [
            client.submit(prompts(items, seed=100 + j), {"max_new_tokens": 16}) for j in range(jobs)
        ]
        for job_id in ids:
            info = client.wait(job_id, timeout_s=1800, poll_interval_s=0.05)
            ok = sum(1 for res in client.iter_results(job_id, page_size=1000) if res.ok)
            if info.completed != items or ok != items:
                raise RuntimeError(f"job {job_id}: {info.completed} completed, {ok} read ok")
        seconds = time.perf_counter() - started
        time.sleep(0.2)  # the worker's last acks and heartbeats
        after = used_memory(r)
    total = items * jobs
    job_keys = [keyspace.job(i) for i in ids]
    result_keys = [keyspace.results(i) for i in ids]
    new_keys = set(r.scan_iter(count=1000)) - keys_before
    other = sorted(k.decode() for k in new_keys if k.decode() not in {*job_keys, *result_keys})
    sample = [v for v in r.hmget(result_keys[0], list(range(min(items, SAMPLE)))) if v]
    record = key_bytes(r, job_keys[0])
    results_bytes = sum(key_bytes(r, k) for k in result_keys)
    out = {
        "jobs": jobs,
        "items_per_job": items,
        "items": total,
        "output_chars": output_chars or 0,
        "seconds": seconds,
        "used_memory_delta_bytes": after - before,
        "used_memory_per_result": (after - before) / total,
        "results_hash_bytes_per_result": results_bytes / total,
        "job_record_bytes": record,
        "job_record_encoding": r.object("encoding", job_keys[0]).decode(),
        "results_encoding": r.object("encoding", result_keys[0]).decode(),
        "result_json_mean_bytes": statistics.fmean(len(v) for v in sample),
        "ttl_s": {"job": r.ttl(job_keys[0]), "results": r.ttl(result_keys[0])},
        "attempts_key_left": bool(r.exists(keyspace.attempts(ids[0]))),
        "other_new_keys": other[:20],
        "key_name_bytes_per_job": sum(len(k) for k in (job_keys[0], result_keys[0])),
    }
    out["per_1m_results_mib_extrapolated"] = out["used_memory_per_result"] * 1e6 / 2**20
    out["sample"] = sample
    return out


def compact(raw: bytes) -> bytes:
    """The result without its null fields, with short field names (genq does not write this)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {SHORT.get(k, k): walk(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return json.dumps(walk(json.loads(raw)), separators=(",", ":")).encode()


def reencoded(r: redis.Redis, sample: list[bytes]) -> dict[str, Any]:
    """Bytes per result of ``sample`` stored as genq stores it and re-encoded, each on a
    scratch hash (index -> value) measured with MEMORY USAGE."""
    variants: dict[str, Callable[[bytes], bytes]] = {
        "as_stored": lambda v: v,
        "compact_json": compact,
        "zlib": lambda v: zlib.compress(v, 6),
        "compact_json_zlib": lambda v: zlib.compress(compact(v), 6),
    }
    out = {}
    for name, encode in variants.items():
        key = f"bench:scratch:{name}"
        values = [encode(v) for v in sample]
        for start in range(0, len(values), 1000):
            r.hset(key, mapping={start + i: v for i, v in enumerate(values[start : start + 1000])})
        out[name] = {
            "value_mean_bytes": statistics.fmean(len(v) for v in values),
            "hash_bytes_per_result": key_bytes(r, key) / len(values),
        }
        r.delete(key)
    return out


def listpack_effect(
    r: redis.Redis, url: str, jobs: int, items: int, log_dir: Path
) -> dict[str, Any]:
    """Small jobs (``items`` each) with Redis's default hash encoding thresholds, then with
    hash-max-listpack-value raised so that their results hashes stay listpacks."""
    defaults: dict[str, str] = {
        k: str(r.config_get(k)[k]) for k in ("hash-max-listpack-entries", "hash-max-listpack-value")
    }
    out: dict[str, Any] = {"defaults": defaults}
    try:
        out["default"] = strip(stored_job(r, url, items, 64, log_dir, "lp-default", jobs=jobs))
        r.config_set("hash-max-listpack-value", 4096)
        r.config_set(
            "hash-max-listpack-entries", max(items, int(defaults["hash-max-listpack-entries"]))
        )
        out["listpack"] = strip(stored_job(r, url, items, 64, log_dir, "lp-raised", jobs=jobs))
        out["listpack"]["config"] = {
            "hash-max-listpack-value": 4096,
            "hash-max-listpack-entries": r.config_get("hash-max-listpack-entries")[
                "hash-max-listpack-entries"
            ],
        }
    finally:
        for k, v in defaults.items():
            r.config_set(k, v)
    return out


def strip(measured: dict[str, Any]) -> dict[str, Any]:
    measured.pop("sample", None)
    return measured


def memory_study(
    r: redis.Redis,
    url: str,
    main_items: int,
    other_items: int,
    output_chars: list[int],
    small_jobs: int,
    log_dir: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    samples: dict[int, list[bytes]] = {}
    plan = [(main_items, 64), (other_items, None)] + [
        (other_items, c) for c in output_chars if c != 64
    ]
    for items, chars in plan:
        m = stored_job(r, url, items, chars, log_dir, f"{chars or 0}c")
        samples[m["output_chars"]] = m.pop("sample")
        out["runs"].append(m)
        click.echo(
            f"[memory] {items:,} items, outputs of {chars or 0} chars"
            f"{' (null engine)' if chars is None else ''}: "
            f"{m['used_memory_per_result']:.0f} B/result used_memory, "
            f"{m['results_hash_bytes_per_result']:.0f} B/result in the results hash, "
            f"result JSON {m['result_json_mean_bytes']:.0f} B; "
            f"1M results ~ {m['per_1m_results_mib_extrapolated']:.0f} MiB",
            err=True,
        )
    r.flushall()
    out["reencoded"] = {chars: reencoded(r, s) for chars, s in samples.items()}
    if small_jobs:
        out["small_jobs"] = listpack_effect(r, url, small_jobs, 100, log_dir)
        out["single_item_jobs"] = strip(
            stored_job(r, url, 1, 64, log_dir, "single", jobs=small_jobs)
        )
        for name, m in (
            ("100-item jobs, default encoding", out["small_jobs"]["default"]),
            ("100-item jobs, listpack", out["small_jobs"]["listpack"]),
            ("1-item jobs", out["single_item_jobs"]),
        ):
            click.echo(
                f"[memory] {name}: {m['used_memory_per_result']:.0f} B/result "
                f"({m['results_encoding']}, job record {m['job_record_encoding']})",
                err=True,
            )
    r.flushall()
    return out
