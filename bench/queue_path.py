"""The queue path alone: one ``null`` worker, default settings, a 20,000-prompt job from submit
to the last result read: waited for, then read page by page; and a second job's results read
as they are written (``Client.follow_results``).

    python -m bench.queue_path                          # 5 runs of this checkout
    python -m bench.queue_path --baseline ../genq-old   # alternated with another checkout

Each run is a fresh process (``--measure``) with its own Redis (no append-only file, as the
other queue benchmarks), so that ``--baseline`` measures another checkout's genq on the same
machine in the same session: its directory goes first on PYTHONPATH and this file imports
nothing but genq. A run prints one JSON line: the submit, the wait for the last item, the
read of every result, prompts per second over all three, and the CPU seconds the worker (its
main thread and its engine thread apart), the client and Redis spent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT_BYTES = 30
PARAMS = {"max_new_tokens": 16, "stop": ["\n\n", "###"], "temperature": 0.7}
READY_TIMEOUT_S = 120


def _cpu_s(pid: int) -> float:
    return _cpu_s_of(f"/proc/{pid}/stat")


def _thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each of the process's threads, by thread id."""
    return {
        int(tid): _cpu_s_of(f"/proc/{pid}/task/{tid}/stat")
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def _cpu_s_of(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(items: int) -> dict[str, Any]:
    """One run in this process, against the genq that PYTHONPATH resolves."""
    from genq.devtools.redis_server import RedisProcess
    from genq.producer.client import Client
    from genq.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp), appendonly=False)
        server.start()
        log_path = Path(tmp) / "worker.log"
        env = {**os.environ, "GENQ_REDIS_URL": server.url, "GENQ_ENGINE": "null"}
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "genq", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            client = Client(settings=Settings(redis_url=server.url))
            deadline = time.monotonic() + READY_TIMEOUT_S
            while "ready: engine=" not in log_path.read_text(errors="replace"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            warm = client.submit(["warm up", "the path"], {"max_new_tokens": 2})
            client.wait(warm, timeout_s=60, poll_interval_s=0.02)
            prompts = [
                f"Describe product {i:08d} now."[:PROMPT_BYTES].ljust(PROMPT_BYTES)
                for i in range(items)
            ]

            def redis_cpu_s() -> float:
                info = client.store.redis.info("cpu")
                return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

            threads_cpu = _thread_cpu_s(worker.pid)
            worker_cpu, redis_cpu, client_cpu = (
                _cpu_s(worker.pid),
                redis_cpu_s(),
                time.process_time(),
            )
            started = time.perf_counter()
            job_id = client.submit(prompts, PARAMS)
            submitted = time.perf_counter()
            info = client.wait(job_id, timeout_s=600, poll_interval_s=0.01)
            done = time.perf_counter()
            read = sum(1 for _ in client.iter_results(job_id))
            finished = time.perf_counter()
            if info.completed != items or read != items:
                raise RuntimeError(f"{info.completed} completed, {read} read of {items}")
            measured: dict[str, Any] = {
                "items": items,
                "submit_s": submitted - started,
                "until_done_s": done - submitted,
                "read_s": finished - done,
                "total_s": finished - started,
                "prompts_per_s": items / (finished - started),
                "worker_cpu_s": _cpu_s(worker.pid) - worker_cpu,
                # The worker's main thread (kombu's consumer, the admission) and its busiest
                # other one (the engine loop): which of the two holds the job back.
                **_threads_spent(worker.pid, threads_cpu),
                "client_cpu_s": time.process_time() - client_cpu,
                "redis_cpu_s": redis_cpu_s() - redis_cpu,
            }
            # A second job, its results read as they are written (Client.follow_results;
            # None for a checkout without it): submit to last result read.
            followed = follow(client, prompts)
            measured["followed_total_s"] = followed
            measured["followed_prompts_per_s"] = items / followed if followed else None
            return measured
        finally:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
            server.stop()


def _threads_spent(pid: int, before: dict[int, float]) -> dict[str, float]:
    spent = {tid: cpu - before.get(tid, 0.0) for tid, cpu in _thread_cpu_s(pid).items()}
    main = spent.pop(pid, 0.0)
    return {
        "worker_main_thread_cpu_s": main,
        "worker_busiest_other_thread_cpu_s": max(spent.values(), default=0.0),
    }


def follow(client: Any, prompts: list[str]) -> float | None:
    """Seconds from submit to the last result read, reading them as they are written."""
    follow_results = getattr(client, "follow_results", None)  # absent in older checkouts
    if follow_results is None:
        return None
    started = time.perf_counter()
    job_id = client.submit(prompts, PARAMS)
    read = sum(1 for _ in follow_results(job_id, timeout_s=600, poll_interval_s=0.01))
    elapsed = time.perf_counter() - started
    if read != len(prompts):
        raise RuntimeError(f"{read} of {len(prompts)} results followed")
    return elapsed


def run_once(tree: Path, items: int) -> dict[str, Any]:
    """One measuring process whose ``import genq`` finds the checkout at ``tree``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", "--items", str(items)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tree,
    )
    if out.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout, alternated with this one")
    parser.add_argument("--out", type=Path, default=Path("bench-out/queue-path.json"))
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.items)))
        return
    trees = {"current": Path(__file__).resolve().parents[1]}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for run in range(args.runs):
        for name, tree in trees.items():
            result = run_once(tree, args.items)
            runs[name].append(result)
            followed = result.get("followed_prompts_per_s")
            print(
                f"run {run + 1} {name}: {result['prompts_per_s']:,.0f} prompts/s "
                f"(followed: {f'{followed:,.0f}' if followed else '-'}) "
                f"(submit {result['submit_s']:.2f} s, until done {result['until_done_s']:.2f} s, "
                f"read {result['read_s']:.2f} s; worker CPU {result['worker_cpu_s']:.2f} s: "
                f"main thread {result['worker_main_thread_cpu_s']:.2f} s, engine thread "
                f"{result['worker_busiest_other_thread_cpu_s']:.2f} s)",
                file=sys.stderr,
            )
    summary = {
        name: {
            "median_prompts_per_s": statistics.median(r["prompts_per_s"] for r in results),
            "median_followed_prompts_per_s": statistics.median(
                [r["followed_prompts_per_s"] for r in results if r.get("followed_prompts_per_s")]
                or [0.0]
            ),
            **{
                f"median_{key}": statistics.median(r[key] for r in results)
                for key in ("submit_s", "until_done_s", "read_s", "total_s", "worker_cpu_s")
            },
            "runs": results,
        }
        for name, results in runs.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"items": args.items, **summary}, indent=2))
    medians = {
        k: {m: v[f"median_{m}"] for m in ("prompts_per_s", "followed_prompts_per_s")}
        for k, v in summary.items()
    }
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
