"""Logs: one line per batch, GENQ_LOG_FORMAT=json for JSON lines (genq's, Celery's and kombu's
records, on real worker and API processes), and no prompt text unless GENQ_LOG_PROMPTS=1."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import start_api
from conftest import RedisProcess, StartWorker, WorkerProcess, free_port

from genq.logs import PROMPT_CHARS, JsonFormatter, log_batch
from genq.producer.client import Client
from genq.settings import Settings

# A prompt no log line may carry: searched for in everything a worker wrote.
SECRET = "zebra-quokka-7731 confidential launch plan"
BATCH_FIELDS = {"worker", "size", "items", "prompt_tokens", "tokens", "ms", "engine"}


def record(message: str = "hello %s", args: tuple[Any, ...] = ("world",), **extra: Any) -> Any:
    rec = logging.LogRecord("genq.test", logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a process's output as a JSON object (fails on the first that is not)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}\n--- output ---\n{text}")
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def batch_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["logger"] == "genq.worker.runner" and "size" in e]


def worker_id(worker: WorkerProcess) -> str:
    found = re.search(r"genq worker (\S+) ready", worker.output())
    assert found, worker.output()
    return found.group(1)


# --- the formatter -------------------------------------------------------------------------


def test_a_json_line_holds_ts_level_logger_message_and_the_record_s_fields() -> None:
    line = JsonFormatter().format(record(size=32, engine="hf"))
    entry = json.loads(line)
    assert entry == {
        "ts": entry["ts"],
        "level": "INFO",
        "logger": "genq.test",
        "message": "hello world",
        "size": 32,
        "engine": "hf",
    }
    ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timezone.utc.utcoffset(None)
    assert abs(ts.timestamp() - record().created) < 5


def test_an_exception_is_one_exc_field_on_the_same_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("failed", ())
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].endswith("ValueError: boom\nsecond line")


def test_a_field_never_replaces_a_fixed_key_and_odd_values_still_encode() -> None:
    entry = json.loads(JsonFormatter().format(record(level="x", logger="y", when=object())))
    assert (entry["level"], entry["logger"]) == ("INFO", "genq.test")
    assert entry["when"].startswith("<object object")


# --- the batch line ------------------------------------------------------------------------


def batch(caplog: pytest.LogCaptureFixture, log_prompts: bool, prompt: str) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genq.test.batch"):
        log_batch(
            logging.getLogger("genq.test.batch"),
            Settings(log_prompts=log_prompts),
            worker="w1",
            engine="hf",
            size=32,
            items=30,
            prompt_tokens=412,
            tokens=1900,
            ms=153.4,
            prompt=prompt,
        )
    (rec,) = caplog.records
    return rec


def test_an_uncaught_exception_in_a_json_worker_process_is_one_json_line() -> None:
    # Celery's stdout/stderr redirection would turn a traceback into a record per line.
    script = (
        "import threading\n"
        "from genq.logs import configure_logging, hand_celery_logging_to_genq\n"
        "from genq.settings import Settings\n"
        "configure_logging(Settings(log_format='json'))\n"
        "hand_celery_logging_to_genq()\n"
        "def boom():\n"
        "    raise ValueError('thread went wrong')\n"
        "t = threading.Thread(target=boom, name='engine'); t.start(); t.join()\n"
        "raise RuntimeError('main went wrong')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    entries = json_lines(out.stderr + out.stdout)
    assert [e["message"] for e in entries] == [
        "uncaught exception in thread engine",
        "uncaught exception",
    ]
    assert "ValueError: thread went wrong" in entries[0]["exc"]
    assert "RuntimeError: main went wrong" in entries[1]["exc"]


def test_the_batch_line_carries_its_sizes_and_never_the_prompt_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = batch(caplog, False, SECRET)
    assert rec.levelno == logging.INFO
    expected = "batch worker=w1 size=32 items=30 prompt_tokens=412 tokens=1900 ms=153 engine=hf"
    assert rec.getMessage() == expected
    entry = json.loads(JsonFormatter().format(rec))
    assert {k: entry[k] for k in BATCH_FIELDS} == {
        "worker": "w1",
        "size": 32,
        "items": 30,
        "prompt_tokens": 412,
        "tokens": 1900,
        "ms": 153,
        "engine": "hf",
    }
    assert "prompt" not in entry
    assert SECRET not in JsonFormatter().format(rec)


def test_with_log_prompts_the_batch_line_carries_the_first_prompt_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    long_prompt = "line one\nline two " + "x" * 400
    rec = batch(caplog, True, long_prompt)
    assert rec.__dict__["prompt"] == long_prompt[:PROMPT_CHARS]
    assert "\n" not in rec.getMessage()  # text logs show it as a repr: one line
    assert rec.getMessage().endswith(f"prompt={long_prompt[:PROMPT_CHARS]!r}")


def test_no_batch_line_below_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="genq.test.quiet"):
        log_batch(
            logging.getLogger("genq.test.quiet"),
            Settings(),
            worker="w1",
            engine="null",
            size=1,
            items=1,
            prompt_tokens=1,
            tokens=0,
            ms=0,
        )
    assert caplog.records == []


# --- real processes ------------------------------------------------------------------------


def run_job(settings: Settings, queue: str, prompts: list[str]) -> tuple[int, int]:
    """Submit ``prompts`` on ``queue`` and wait: (prompt tokens, generated tokens) of the job."""
    client = Client(settings=settings.model_copy(update={"queue": queue}))
    job_id = client.submit(prompts, {"max_new_tokens": 3, "do_sample": False})
    info = client.wait(job_id, timeout_s=120)
    assert info.completed == len(prompts), info
    results = list(client.iter_results(job_id))
    assert all(r.usage is not None for r in results)
    prompt_tokens = sum(r.usage.prompt_tokens for r in results if r.usage)
    return prompt_tokens, sum(r.usage.completion_tokens for r in results if r.usage)


def test_a_json_worker_writes_only_json_lines_with_batch_fields_and_no_prompt(
    start_worker: StartWorker, settings: Settings
) -> None:
    """hf engine, continuous batching (the batch line of items that finish together): every
    line the worker writes, start to warm shutdown, is a JSON object; the batch lines add up to
    the job; the prompts appear nowhere."""
    queue = "logs-json"
    worker = start_worker(queue=queue, log_format="json", max_batch_size="4")
    prompts = [f"{SECRET} {i}" for i in range(7)]
    prompt_tokens, tokens = run_job(settings, queue, prompts)
    assert tokens > 0
    worker.stop()  # SIGTERM: Celery's shutdown notice and genq's last lines too
    output = worker.output()
    entries = json_lines(output)
    assert {e["logger"].split(".")[0] for e in entries} >= {"genq", "celery"}
    lines = batch_lines(entries)
    assert lines, output
    for line in lines:
        assert line["level"] == "INFO"
        assert line["message"].startswith("batch worker=")
        assert (line["worker"], line["engine"]) == (worker_id(worker), "hf")
        assert 1 <= line["items"] <= line["size"] <= 4
        assert line["ms"] >= 0
        assert "prompt" not in line
    assert sum(line["items"] for line in lines) == len(prompts)
    assert sum(line["prompt_tokens"] for line in lines) == prompt_tokens
    assert sum(line["tokens"] for line in lines) == tokens
    assert SECRET not in output
    assert "zebra-quokka" not in output


def test_with_log_prompts_a_json_batch_line_carries_the_first_prompt(
    start_worker: StartWorker, settings: Settings
) -> None:
    """null engine (static batches): GENQ_LOG_PROMPTS=1 puts the first prompt, cut to 200
    characters, on the batch line; still only JSON lines."""
    queue = "logs-prompts"
    worker = start_worker(queue=queue, engine="null", log_format="json", log_prompts="1")
    long_prompt = f"{SECRET} " + "and more words " * 30
    prompts = [f"{long_prompt} {i}" for i in range(5)]
    prompt_tokens, _ = run_job(settings, queue, prompts)
    worker.stop()
    lines = batch_lines(json_lines(worker.output()))
    assert sum(line["items"] for line in lines) == len(prompts)
    assert sum(line["prompt_tokens"] for line in lines) == prompt_tokens
    assert {line["engine"] for line in lines} == {"null"}
    assert {line["prompt"] for line in lines} == {long_prompt[:PROMPT_CHARS]}
    assert SECRET in worker.output()
    assert long_prompt not in worker.output()  # cut short


def test_a_text_worker_logs_the_batch_line_as_text_without_the_prompt(
    worker: WorkerProcess, client: Client
) -> None:
    """The default format stays Celery's human lines, with the batch line among them."""
    job_id = client.submit([f"{SECRET} text {i}" for i in range(3)], {"max_new_tokens": 2})
    assert client.wait(job_id, timeout_s=120).completed == 3
    output = worker.output()
    line = rf"INFO/MainProcess\] batch worker={re.escape(worker_id(worker))} size=\d+ items=\d+ "
    assert re.search(line + r"prompt_tokens=\d+ tokens=\d+ ms=\d+ engine=hf", output), output
    assert "zebra-quokka" not in output
    assert not output.lstrip().startswith("{")


def test_a_json_api_writes_only_json_lines(redis_server: RedisProcess, tmp_path: Path) -> None:
    """`genq api` with GENQ_LOG_FORMAT=json: uvicorn's lines (startup, access log) are JSON."""
    env = {
        "GENQ_REDIS_URL": redis_server.url,
        "GENQ_API_KEYS": "sk-genq-logs-0123456789ab",
        "GENQ_LOG_FORMAT": "json",
    }
    api = start_api(free_port(), tmp_path / "api.log", env)
    try:
        assert httpx.get(f"{api.url}/healthz").status_code == 200
        assert httpx.get(f"{api.url}/no-such-route").status_code == 404
    finally:
        api.stop()
    entries = json_lines(api.output())
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any("/no-such-route" in e["message"] and "404" in e["message"] for e in access)
    assert any(e["logger"] == "uvicorn.error" for e in entries)
