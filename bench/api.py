"""The HTTP API under load on this machine: polling latency, upload throughput and memory, and
how soon a batch starts.

    python -m bench.api                      # 50 pollers x 20 s; a 50,000-line, ~105 MB upload
    python -m bench.api --lines 5000 --poll-s 5

Everything runs here: a Redis-protocol server, one `genq api` process (uvicorn, one process),
one `genq worker` on the `null` engine (no model: what is measured is the API and the queue, not
generation), and the load generator (httpx, asyncio) on the same cores.

- Polling: ``--pollers`` concurrent clients each GET /v1/batches/{id} in a loop for ``--poll-s``
  seconds; p50/p99 of the request latency and requests/s overall.
- Upload: a JSON Lines file of ``--lines`` /v1/completions requests (~2.1 KB each) POSTed to
  /v1/files; MB/s from the first byte sent to the answer (the file is checked line by line and
  stored in Redis by then), and the API process's peak RSS (VmHWM) before and after.
- Start: from the POST /v1/batches of that file to its first line running (the job's
  ``started_at``, set when a worker admits its first message) and to the first result; and how
  long the create call itself takes (it enqueues every line before it answers).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from genq import keyspace
from genq.devtools.redis_server import RedisProcess, free_port

KEY = "sk-genq-bench-0123456789abcdef"
LINE_PROMPT_CHARS = 2000


def _wait_for(predicate: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _peak_rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    """``pid`` and its child processes (uvicorn's --workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return [pid, *children]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its children have used."""
    total = 0
    for one in _tree(pid):
        fields = _stat(one)
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _input_file(path: Path, lines: int) -> int:
    with path.open("wb") as out:
        for i in range(lines):
            prompt = (f"Describe product {i:06d} for the spring catalogue. " * 60)[
                :LINE_PROMPT_CHARS
            ]
            body = {"model": "bench", "prompt": prompt, "max_tokens": 16}
            line = {"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions", "body": body}
            out.write(json.dumps(line).encode() + b"\n")
    return path.stat().st_size


async def _poll(url: str, batch_id: str, pollers: int, seconds: float) -> dict[str, float]:
    """``pollers`` keep-alive connections, each GETting the batch in a loop for ``seconds``.

    A minimal HTTP/1.1 client on asyncio streams: httpx's AsyncClient spends ~10 ms of CPU per
    request here, so on 2 cores it, not the API, would be what is measured.
    """
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /v1/batches/{batch_id} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def poller() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < end:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors += not head.startswith(b"HTTP/1.1 200")
        writer.close()

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(poller() for _ in range(pollers)))
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    ordered = sorted(latencies)
    return {
        "pollers": pollers,
        "requests": len(ordered),
        "errors": errors,
        "requests_per_s": len(ordered) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
        "mean_ms": 1000 * statistics.fmean(ordered),
        "load_generator_cpu_ms_per_request": 1000 * cpu / max(len(ordered), 1),
    }


@click.command()
@click.option("--lines", type=int, default=50_000, show_default=True)
@click.option("--pollers", type=int, default=50, show_default=True)
@click.option("--poll-s", type=float, default=20.0, show_default=True)
@click.option("--api-workers", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench-out/api")
def main(lines: int, pollers: int, poll_s: float, api_workers: int, out: str) -> None:
    """Measure the API: polling latency, upload throughput and peak RSS, batch start time."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp), appendonly=False)
        server.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "GENQ_REDIS_URL": server.url,
            "GENQ_API_KEYS": KEY,
            "GENQ_ENGINE": "null",
            "GENQ_MODEL": "bench",
            "GENQ_SERVED_MODEL_NAME": "bench",
            "GENQ_QUEUE": "bench-api",
            "GENQ_HEARTBEAT_S": "1",
            "GENQ_MAX_BATCH_SIZE": "256",
        }
        procs = []
        try:
            with (out_dir / "api.log").open("wb") as log:
                api = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "genq",
                        "api",
                        "--port",
                        str(port),
                        "--workers",
                        str(api_workers),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            procs.append(api)
            with (out_dir / "worker.log").open("wb") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "genq", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            procs.append(worker)
            h = httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=600)
            _wait_for(lambda: _ready(url), "the API and the worker")
            result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPU cores", "lines": lines}
            path = Path(tmp) / "input.jsonl"
            size = _input_file(path, lines)
            rss_before, _ = _peak_rss_mib(api.pid)
            start = time.perf_counter()
            with path.open("rb") as f:
                uploaded = h.post(
                    "/v1/files", files={"file": ("input.jsonl", f)}, data={"purpose": "batch"}
                )
            upload_s = time.perf_counter() - start
            uploaded.raise_for_status()
            _, rss_peak = _peak_rss_mib(api.pid)
            result["upload"] = {
                "bytes": size,
                "seconds": upload_s,
                "mb_per_s": size / 1e6 / upload_s,
                "api_rss_before_mib": rss_before,
                "api_peak_rss_mib": rss_peak,
            }
            click.echo(json.dumps(result["upload"]), err=True)
            file_id = uploaded.json()["id"]
            start_wall = time.time()
            start = time.perf_counter()
            made = h.post(
                "/v1/batches",
                json={
                    "input_file_id": file_id,
                    "endpoint": "/v1/completions",
                    "completion_window": "24h",
                },
            )
            create_s = time.perf_counter() - start
            made.raise_for_status()
            batch = made.json()
            if batch["status"] == "failed":
                raise RuntimeError(f"the batch failed: {batch['errors']}")
            job_id = batch["id"].removeprefix("batch_")
            from genq.connection import connect

            r = connect(server.url)
            _wait_for(lambda: r.hget(keyspace.job(job_id), "started_at"), "the first line")
            started_at = float(r.hget(keyspace.job(job_id), "started_at"))  # type: ignore[arg-type]
            _wait_for(lambda: r.hlen(keyspace.results(job_id)) > 0, "the first result")
            # The create call returns once every line is enqueued; workers start before that.
            # The first result's time is its own record (the results of the first lines).
            first = r.hmget(keyspace.results(job_id), [str(i) for i in range(200)])
            first_result_s = (
                min(json.loads(v)["timing"]["finished_at"] for v in first if v) - start_wall
            )
            _, rss_after_create = _peak_rss_mib(api.pid)
            result["start"] = {
                "create_call_s": create_s,
                "create_to_first_line_running_s": started_at - start_wall,
                "create_to_first_result_s": first_result_s,
                "api_peak_rss_mib_after_create": rss_after_create,
            }
            click.echo(json.dumps(result["start"]), err=True)
            cpu_before = _cpu_s(api.pid)
            result["poll"] = asyncio.run(_poll(url, batch["id"], pollers, poll_s))
            result["poll"]["api_cpu_ms_per_request"] = (
                1000 * (_cpu_s(api.pid) - cpu_before) / max(result["poll"]["requests"], 1)
            )
            click.echo(json.dumps(result["poll"]), err=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            server.stop()
    (out_dir / "api.json").write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
