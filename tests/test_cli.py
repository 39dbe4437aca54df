"""End to end through the ``genq`` command, as a user runs it, with a real worker and model."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from genq import keyspace
from genq.producer.cli_options import OutputFile
from genq.producer.client import Client
from genq.schema import GenerationParams, ItemResult, WorkItem
from genq.settings import Settings
from genq.worker.engines.base import Prepared
from genq.worker.engines.hf import HFEngine
from genq.worker.work_store import WorkStore

Cli = Callable[..., subprocess.CompletedProcess[str]]

SAMPLES = [
    "Write a tagline for a bakery",
    "人工智能生成内容正在改变营销文案",
    "Launch day 🚀🎉 — write the announcement",
    "He said \"hello\" and 'goodbye'",
    "Line one\nLine two\n\tindented",
    "Summarise: revenue grew 12% while costs fell",
    "x",
    "Le café est prêt, ça va très bien",
]


def make_items(n: int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for i in range(n):
        item: dict[str, object] = {"prompt": f"{SAMPLES[i % len(SAMPLES)]} #{i}"}
        if i % 3 == 0:
            item["custom_id"] = f"sku-{i:05d}"
        items.append(item)
    return items


def write_jsonl(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return path


def queue_length(client: Client) -> int:
    return client.store.queue_length(client.settings.queue)


def test_bulk_job_round_trip_through_the_cli(
    genq_cli: Cli, tmp_path: Path, tiny_model: Path, engine_worker: tuple[str, str]
) -> None:
    engine, queue = engine_worker
    items = make_items(300)
    source = write_jsonl(tmp_path / "prompts.jsonl", items)
    env = {"GENQ_QUEUE": queue}

    submitted = genq_cli("submit", str(source), "--greedy", "--max-new-tokens", "8", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert len(job_id) == 32
    assert "\n" not in job_id

    waited = genq_cli("wait", job_id, "--timeout", "150")
    assert waited.returncode == 0, waited.stderr

    out = tmp_path / "results.jsonl"
    assert genq_cli("results", job_id, "-o", str(out)).returncode == 0
    results = [ItemResult.model_validate_json(line) for line in out.read_text().splitlines()]

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    assert [r.index for r in results] == list(range(300))  # every item once, in order
    for item, result in zip(items, results, strict=True):
        assert result.prompt == item["prompt"]
        assert result.custom_id == item.get("custom_id", str(result.index))
        assert result.error is None
        assert len(result.outputs) == 1
        assert isinstance(result.outputs[0], str)
        assert result.worker_id
        assert result.timing is not None
        assert result.timing.batch_size >= 1
        if engine == "null":  # no model: empty outputs, one "token" per prompt byte
            assert result.outputs == [""]
            assert result.usage.prompt_tokens == len(result.prompt.encode())
            continue
        assert result.usage.prompt_tokens == len(tokenizer.encode(result.prompt))
        expected = 8 if result.finish_reason == "length" else result.usage.completion_tokens
        assert result.usage.completion_tokens == expected <= 8

    status = json.loads(genq_cli("status", job_id, "--json").stdout)
    assert {k: status[k] for k in ("id", "status", "total", "completed", "failed")} == {
        "id": job_id,
        "status": "completed",
        "total": 300,
        "completed": 300,
        "failed": 0,
    }
    assert status["created_at"]
    assert status["finished_at"]


@pytest.mark.usefixtures("worker")
def test_prompts_share_forward_passes_and_greedy_output_ignores_neighbours(
    genq_cli: Cli, tmp_path: Path, tiny_model: Path, client: Client
) -> None:
    before = {w.id: dict(w.batch_sizes) for w in client.workers()}
    items = make_items(64)
    job_id = client.submit(items, {"do_sample": False, "max_new_tokens": 10})
    assert client.wait(job_id, timeout_s=120).completed == 64

    grown: Counter[int] = Counter()
    for w in client.workers():
        for size, count in w.batch_sizes.items():
            grown[size] += count - before.get(w.id, {}).get(size, 0)
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown
    results = list(client.iter_results(job_id))
    assert max(r.timing.batch_size for r in results if r.timing) > 1

    engine = HFEngine.load(Settings(model=str(tiny_model), device="cpu"))
    params = GenerationParams(do_sample=False, max_new_tokens=10)
    for result in results[:16]:
        item = WorkItem(index=0, custom_id="x", prompt=result.prompt, params=params)
        alone = engine.generate([Prepared("j", 0.0, item, engine.encode(result.prompt), 10)])[0]
        assert result.outputs == alone.outputs, result.prompt


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": broken\n', [], "line 2: invalid JSON"),
        ("", [], "contains no prompts"),
        (
            '{"prompt": "a", "params": {"temprature": 1}}\n',
            [],
            "line 1: params.temprature: unknown parameter",
        ),
        (
            '{"prompt": "a"}\n',
            ["--temperature", "-1"],
            "temperature: Input should be greater than 0",
        ),
        ('{"prompt": "a"}\n', ["--top-p", "2"], "top_p: Input should be less than or equal to 1"),
        (
            '{"prompt": "a", "custom_id": "x"}\n{"prompt": "b", "custom_id": "x"}\n',
            [],
            "line 2: custom_id 'x' is already used by line 1",
        ),
        ('{"prompt": ""}\n', [], "line 1: prompt: String should have at least 1 character"),
        ('{"text": "a"}\n', [], "line 1: prompt: Field required"),
        ('{"prompt": "a"}\n', ["--max-new-tokens", "5", "--max-length", "9"], "not both"),
    ],
)
def test_bad_input_is_a_clear_error_and_enqueues_nothing(
    genq_cli: Cli, tmp_path: Path, client: Client, content: str, args: list[str], message: str
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    queued_before = queue_length(client)
    result = genq_cli("submit", str(source), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before
    assert queue_length(client) == queued_before


def test_txt_and_stdin_inputs_are_accepted(genq_cli: Cli, tmp_path: Path, client: Client) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("first prompt\n\nsecond prompt\n")
    job_a = genq_cli("submit", str(source)).stdout.strip()
    job_b = genq_cli(
        "submit", "-", input='{"prompt": "from stdin", "custom_id": "s"}\n'
    ).stdout.strip()
    assert client.status(job_a).total == 2
    assert client.status(job_b).total == 1


@pytest.mark.usefixtures("worker")
def test_cancel_stops_unstarted_items_and_keeps_finished_results(
    genq_cli: Cli, client: Client
) -> None:
    job_id = client.submit(make_items(800), {"max_new_tokens": 64})
    deadline = time.monotonic() + 60
    while client.status(job_id).done == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = genq_cli("cancel", job_id)
    assert cancelled.returncode == 0
    assert "cancelled" in cancelled.stdout
    # Rows already in flight may still land; wait until the count stops moving.
    info, deadline = client.status(job_id), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.5)
        latest = client.status(job_id)
        if latest.done == info.done:
            break
        info = latest
    assert info.status.value == "cancelled"
    assert 0 < info.done < info.total
    results = list(client.iter_results(job_id))
    assert len(results) == info.done
    assert genq_cli("wait", job_id).returncode == 1


def test_status_of_an_unknown_job_is_a_clear_error(genq_cli: Cli) -> None:
    result = genq_cli("status", "0" * 32)
    assert result.returncode == 3  # no such job
    assert "no job" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_is_a_clear_error_without_the_password(
    genq_cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("hello\n")
    url = "redis://user:s3cret@127.0.0.1:1/0"
    result = genq_cli("submit", str(source), env={"GENQ_REDIS_URL": url})
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("worker")
def test_submit_wait_writes_results(genq_cli: Cli, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", make_items(5))
    out = tmp_path / "out.jsonl"
    result = genq_cli("submit", str(source), "--max-new-tokens", "4", "--wait", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.parametrize("command", ["submit", "run"])
@pytest.mark.parametrize("where", ["no-such-dir/out.jsonl", "."])
def test_an_output_that_cannot_be_written_is_refused_before_anything_is_submitted(
    genq_cli: Cli, tmp_path: Path, settings: Settings, command: str, where: str
) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", make_items(2))
    before = set(Client(settings=settings).store.redis.keys(keyspace.namespace("job", "*")))
    result = genq_cli(command, str(source), "-o", where, env={"GENQ_QUEUE": "output-check"})
    assert result.returncode == 2, result.stderr
    assert "nothing was submitted" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert set(Client(settings=settings).store.redis.keys(keyspace.namespace("job", "*"))) == before
    assert not (tmp_path / "no-such-dir").exists()


@pytest.mark.usefixtures("worker")
def test_results_follow_writes_each_result_as_the_job_runs(genq_cli: Cli, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", make_items(6))
    job_id = genq_cli("submit", str(source), "--max-new-tokens", "4").stdout.strip()
    out = tmp_path / "out.jsonl"
    followed = genq_cli("results", job_id, "--follow", "--timeout", "150", "-o", str(out))
    assert followed.returncode == 0, followed.stderr
    indexes = [ItemResult.model_validate_json(line).index for line in out.read_text().splitlines()]
    assert indexes == list(range(6))


def test_results_follow_stops_at_its_timeout_with_what_it_has(
    genq_cli: Cli, tmp_path: Path, settings: Settings
) -> None:
    idle = Client(settings=settings.model_copy(update={"queue": "follow-cli-idle"}))
    job_id = idle.submit(["one", "two", "three"])
    results = [ItemResult(custom_id="0", index=0, prompt="one", outputs=["1"])]
    WorkStore(idle.store.redis, 60).record({job_id: results})
    out = tmp_path / "out.jsonl"
    followed = genq_cli("results", job_id, "--follow", "--timeout", "1", "-o", str(out))
    assert followed.returncode == 124, followed.stderr
    assert "still running" in followed.stderr
    assert [ItemResult.model_validate_json(x).index for x in out.read_text().splitlines()] == [0]
    alone = genq_cli("results", job_id, "--timeout", "1")
    assert alone.returncode == 2
    assert "--timeout goes with --follow" in alone.stderr


def test_the_output_check_leaves_what_is_there_as_it_was(tmp_path: Path) -> None:
    check = OutputFile()
    (tmp_path / "dangling").symlink_to(tmp_path / "target.jsonl")
    os.mkfifo(tmp_path / "fifo")  # opening it to check would block until a reader came
    (tmp_path / "kept.jsonl").write_text("earlier\n")
    for name in ("dangling", "fifo", "kept.jsonl", "new.jsonl"):
        assert check.convert(str(tmp_path / name), None, None) == str(tmp_path / name)
    assert (tmp_path / "dangling").is_symlink()
    assert not (tmp_path / "target.jsonl").exists()
    assert (tmp_path / "kept.jsonl").read_text() == "earlier\n"
    assert not (tmp_path / "new.jsonl").exists()  # made by the check alone, and removed


@pytest.mark.parametrize("command", ["status", "results", "cancel", "wait"])
def test_a_malformed_job_id_is_a_clear_error(genq_cli: Cli, command: str) -> None:
    result = genq_cli(command, "a b:*")
    assert result.returncode == 3  # no such job
    assert "invalid job id" in result.stderr
    assert "Traceback" not in result.stderr


def test_submit_with_an_idempotency_key_prints_the_same_id_twice(
    genq_cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "p.txt"
    source.write_text("hello\n")
    key = f"retry-{time.time_ns()}"
    first = genq_cli("submit", str(source), "--idempotency-key", key, env={"GENQ_QUEUE": "idle"})
    second = genq_cli("submit", str(source), "--idempotency-key", key, env={"GENQ_QUEUE": "idle"})
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_a_job_with_a_deadline_and_no_worker_ends_expired(genq_cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("hello\n")
    idle = {"GENQ_QUEUE": "idle"}
    submitted = genq_cli("submit", str(source), "--expires-in", "5s", env=idle)
    assert submitted.returncode == 0
    job_id = submitted.stdout.strip()
    assert "expires " in genq_cli("status", job_id).stdout
    waited = genq_cli("wait", job_id, "--timeout", "30")
    assert waited.returncode == 1
    assert f"job {job_id} ended expired" in waited.stderr
    bad = genq_cli("submit", str(source), "--expires-in", "soon", env=idle)
    assert bad.returncode == 2
    assert "is not a duration" in bad.stderr


def test_an_idempotency_key_reused_for_another_file_is_refused_with_exit_2(
    genq_cli: Cli, tmp_path: Path
) -> None:
    key = f"conflict-{time.time_ns()}"
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "b.txt").write_text("hello\nworld\n")
    idle = {"GENQ_QUEUE": "idle"}
    first = genq_cli("submit", str(tmp_path / "a.txt"), "--idempotency-key", key, env=idle)
    assert first.returncode == 0, first.stderr
    second = genq_cli("submit", str(tmp_path / "b.txt"), "--idempotency-key", key, env=idle)
    assert second.returncode == 2
    assert second.stdout == ""
    assert f"idempotency key already used for job {first.stdout.strip()}" in second.stderr
    assert "Traceback" not in second.stderr
