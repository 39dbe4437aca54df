"""The operator's commands end to end through the ``genq`` command (a subprocess, so stdout is
a pipe): exit statuses, result filters, retry, job filters, JSON output, dead letters, and the
warnings that keep a job from waiting silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import ROOT, RedisProcess, valkey_binary

from genq import keyspace
from genq.connection import connect
from genq.producer.client import Client
from genq.producer.enqueueing import new_job_id
from genq.schema import DeadLetter, ItemResult, JobInfo, JobItem, JobSpec, JobStatus, WorkerInfo
from genq.store import JobStore
from genq.submissions import JobQuery, NewJob

Cli = Callable[..., subprocess.CompletedProcess[str]]

# Far longer than the tiny test model's 128-token context: the item fails, the job goes on.
TOO_LONG = " ".join(f"word{i}" for i in range(400))
IDLE = {"GENQ_QUEUE": "ops-no-worker"}  # a queue no worker consumes
SUBMIT_ARGS = ("--max-new-tokens", "4", "-m", "campaign=winter", "--wait")

ERROR_ITEMS: list[dict[str, object]] = [
    {"prompt": "Write a tagline for a bakery", "custom_id": "bakery"},
    {"prompt": f"{TOO_LONG} a", "custom_id": "long-a", "params": {"temperature": 0.5}},
    {"prompt": "Describe a red bike", "params": {"max_new_tokens": 2}},
    {"prompt": f"{TOO_LONG} b"},
    {"prompt": "Le café est prêt"},
]


def write_jsonl(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return path


def submitted_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert len(job_id) == 32, result.stdout
    return job_id


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stderr, checked to be one ``error: ...`` line and no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A server of its own, without an append-only file (its notices and data start empty)."""
    server = RedisProcess(tmp_path / "fresh")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failed_job(
    worker: object, redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A completed job, submitted and waited on through the CLI, with two failed items."""
    source = write_jsonl(tmp_path_factory.mktemp("failed") / "p.jsonl", ERROR_ITEMS)
    env = {**os.environ, "GENQ_REDIS_URL": redis_server.url}
    result = subprocess.run(
        [sys.executable, "-m", "genq", "submit", str(source), *SUBMIT_ARGS],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    return submitted_id(result), result


def test_a_job_with_failed_items_completes_and_says_how_to_retry_them(
    failed_job: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    job_id, submitted = failed_job
    # A live worker consumes the default queue: no warning about that.
    assert "no live worker" not in submitted.stderr
    assert f"2 of 5 items failed: `genq results {job_id} --failed`" in submitted.stderr


def test_results_filters_select_failed_or_ok_items(
    genq_cli: Cli, failed_job: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    job_id = failed_job[0]

    def results(*args: str) -> list[ItemResult]:
        out = genq_cli("results", job_id, *args)
        assert out.returncode == 0, out.stderr
        return [ItemResult.model_validate_json(line) for line in out.stdout.splitlines()]

    everything, failed, ok = results(), results("--failed"), results("--ok")
    assert [r.index for r in everything] == [0, 1, 2, 3, 4]
    assert [r.index for r in failed] == [1, 3]
    assert {r.error.type for r in failed if r.error} == {"context_length_exceeded"}
    assert [r.index for r in ok] == [0, 2, 4]
    assert all(r.ok for r in ok)
    both = genq_cli("results", job_id, "--failed", "--ok")
    assert both.returncode == 2
    assert "exclude each other" in one_error_line(both)
    assert both.stdout == ""


def test_retry_submits_exactly_the_failed_items_as_a_linked_job(
    genq_cli: Cli, client: Client, failed_job: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    job_id = failed_job[0]
    original = client.status(job_id)
    retried = genq_cli("retry", job_id, "--json", "--wait")
    assert retried.returncode == 0, retried.stderr
    lines = retried.stdout.splitlines()
    assert len(lines) == 1  # the job as submitted; progress and notes go to stderr
    new = JobInfo.model_validate_json(lines[0])
    assert new.id != job_id
    assert new.total == 2
    assert new.metadata == {"campaign": "winter", "retry_of": job_id}
    assert new.params == original.params  # the original's defaults (max_new_tokens 4)

    results = list(client.iter_results(new.id))
    # custom_ids always explicit: "3" is the unnamed item's index in the original job.
    assert [(r.custom_id, r.prompt) for r in results] == [
        ("long-a", f"{TOO_LONG} a"),
        ("3", f"{TOO_LONG} b"),
    ]
    # Needs the worker to record each item's own overrides (ItemResult.params).
    assert [r.params for r in results] == [{"temperature": 0.5}, None]
    assert client.status(new.id).status is JobStatus.COMPLETED

    found = genq_cli("jobs", "-m", f"retry_of={job_id}", "--json")
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [new.id]


def test_retry_of_a_job_without_failed_items_submits_nothing(
    genq_cli: Cli, client: Client, worker: object, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "fine"}, {"prompt": "also fine"}])
    job_id = submitted_id(genq_cli("submit", str(source), "--max-new-tokens", "4", "--wait"))
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    retried = genq_cli("retry", job_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == ""
    assert "no failed items" in retried.stderr
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before


def test_retry_refuses_a_running_job_and_a_cancelled_job_has_nothing_to_retry(
    genq_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    job_id = submitted_id(genq_cli("submit", str(tmp_path / "p.txt"), env=IDLE))
    refused = genq_cli("retry", job_id)
    assert refused.returncode == 1
    assert "is still queued" in one_error_line(refused)
    assert refused.stdout == ""

    cancelled = genq_cli("cancel", job_id, "--json")
    assert JobInfo.model_validate_json(cancelled.stdout).status is JobStatus.CANCELLED
    retried = genq_cli("retry", job_id)
    assert retried.returncode == 0
    assert retried.stdout == ""
    assert "2 item(s)" in retried.stderr
    assert "never started" in retried.stderr


@pytest.mark.parametrize("job_id", ["0" * 32, "a b:*"], ids=["unknown", "malformed"])
@pytest.mark.parametrize("command", ["status", "results", "wait", "cancel", "retry"])
def test_every_job_command_exits_3_for_no_such_job(
    genq_cli: Cli, command: str, job_id: str
) -> None:
    result = genq_cli(command, job_id)
    assert result.returncode == 3
    line = one_error_line(result)
    assert ("no job" if job_id == "0" * 32 else "invalid job id") in line
    assert result.stdout == ""


def test_jobs_filters_by_status_and_metadata_and_prints_whole_ids_to_a_pipe(
    genq_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    run = f"run={uuid.uuid4().hex}"
    a = submitted_id(genq_cli("submit", str(tmp_path / "p.txt"), "-m", run, "-m", "k=a", env=IDLE))
    b = submitted_id(genq_cli("submit", str(tmp_path / "p.txt"), "-m", run, "-m", "k=b", env=IDLE))
    c = submitted_id(genq_cli("submit", str(tmp_path / "p.txt"), "-m", run, "-m", "k=b", env=IDLE))
    assert genq_cli("cancel", c).returncode == 0

    def ids(*args: str) -> list[str]:
        out = genq_cli("jobs", *args, "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["id"] for line in out.stdout.splitlines()]

    assert ids("-m", run) == [c, b, a]  # newest first
    assert ids("-m", run, "-m", "k=b") == [c, b]
    assert ids("-m", run, "--status", "cancelled") == [c]
    assert ids("-m", run, "--status", "queued", "--status", "cancelled", "--limit", "2") == [c, b]
    assert ids("-m", run, "--status", "completed") == []

    piped = genq_cli("jobs", "-m", run)  # stdout is a pipe: tab-separated, whole ids, no header
    rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert [row[0] for row in rows] == [c, b, a]
    assert [row[1] for row in rows] == ["cancelled", "queued", "queued"]
    assert rows[2][-1] == f"{run},k=a"

    for bad in (["--status", "lost"], ["-m", "no-equals-sign"]):
        refused = genq_cli("jobs", *bad)
        assert refused.returncode == 2
        one_error_line(refused)


def test_workers_through_a_pipe_and_as_json_show_whole_ids(
    genq_cli: Cli, client: Client, worker: object
) -> None:
    live = {w.id for w in client.workers()}
    piped = genq_cli("workers")
    assert piped.returncode == 0, piped.stderr
    rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert {row[0] for row in rows} == live
    assert all(row[1] == w.queue for row in rows for w in client.workers() if w.id == row[0])
    as_json = genq_cli("workers", "--json")
    assert {WorkerInfo.model_validate_json(x).id for x in as_json.stdout.splitlines()} == live


def test_list_jobs_scans_past_a_page_and_pruned_ids(client: Client) -> None:
    store = client.store
    tag = uuid.uuid4().hex
    spec = JobSpec(items=[JobItem(prompt="p")], metadata={"scan": tag})
    oldest = new_job_id()
    store.create_job(oldest, NewJob.of(spec))
    plain = JobSpec(items=[JobItem(prompt="p")])
    newer = [new_job_id() for _ in range(620)]
    for job_id in newer:
        store.create_job(job_id, NewJob.of(plain))
    # Records gone from the first page must not make the scan skip ids behind them.
    store.redis.delete(*(keyspace.job(j) for j in newer[-50:]))
    query = JobQuery(metadata={"scan": tag})
    assert [info.id for info in store.list_jobs(5, query)] == [oldest]
    assert not store.redis.zscore(keyspace.jobs_index(), newer[-1])  # pruned
    statuses = JobQuery(statuses=frozenset({JobStatus.QUEUED}), metadata={"scan": tag})
    assert [info.id for info in client.jobs(1, statuses)] == [oldest]


def test_submit_warns_when_no_live_worker_consumes_the_queue_and_wait_says_so(
    genq_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    submitted = genq_cli("submit", str(tmp_path / "p.txt"), env=IDLE)
    job_id = submitted_id(submitted)  # stdout is the id alone
    assert (
        "warning: no live worker consumes queue 'ops-no-worker'; the job waits until one "
        "starts (genq worker)"
    ) in submitted.stderr
    waited = genq_cli("wait", job_id, "--timeout", "2", env=IDLE)
    assert waited.returncode == 124
    assert "no live workers" in waited.stderr
    assert "is still queued after 2s" in waited.stderr
    assert waited.stdout == ""


def test_submit_warns_once_per_redis_without_an_append_only_file(
    genq_cli: Cli, tmp_path: Path, fresh_redis: RedisProcess
) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    env = {"GENQ_REDIS_URL": fresh_redis.url, **IDLE}
    warning = (
        f"warning: Redis at {fresh_redis.url} has no append-only file: accepted jobs are lost "
        "if it restarts (appendonly yes)"
    )
    first = genq_cli("submit", str(tmp_path / "p.txt"), env=env)
    second = genq_cli("submit", str(tmp_path / "p.txt"), env=env)
    submitted_id(first), submitted_id(second)
    assert first.stderr.count(warning) == 1
    assert "append-only" not in second.stderr
    assert fresh_redis.url not in first.stdout


def test_submit_on_a_redis_with_an_append_only_file_does_not_warn(
    genq_cli: Cli, tmp_path: Path
) -> None:
    server = RedisProcess(tmp_path / "aof", appendonly=True, binary=valkey_binary())
    server.start()
    try:
        (tmp_path / "p.txt").write_text("hello\n")
        env = {"GENQ_REDIS_URL": server.url, **IDLE}
        submitted = genq_cli("submit", str(tmp_path / "p.txt"), env=env)
        submitted_id(submitted)
        assert "append-only" not in submitted.stderr
        missing = genq_cli("status", "0" * 32, env=env)
        assert missing.returncode == 3
        line = one_error_line(missing)
        assert "never submitted to this Redis" in line
        assert "restart" not in line
    finally:
        server.stop()


def test_wait_on_a_job_that_vanishes_from_redis_says_so(
    tmp_path: Path, fresh_redis: RedisProcess, genq_cli: Cli
) -> None:
    (tmp_path / "p.txt").write_text("hello\n")
    env = {"GENQ_REDIS_URL": fresh_redis.url, **IDLE}
    job_id = submitted_id(genq_cli("submit", str(tmp_path / "p.txt"), env=env))
    waiting = subprocess.Popen(
        [sys.executable, "-m", "genq", "wait", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    try:
        probe = connect(fresh_redis.url)
        deadline = time.monotonic() + 60
        # Flush only once the waiter has read the job: some client's last command is HGETALL.
        while not any(c.get("cmd") == "hgetall" for c in probe.client_list()):
            assert waiting.poll() is None, waiting.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        probe.flushall()
        _, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 3
    assert "Traceback" not in err
    assert f"error: job {job_id} vanished from Redis while being waited on" in err
    assert "submit it again" in err
    assert "never submitted" not in err

    # Asked afresh, the not-found message names a restart of this AOF-less server as a cause.
    missing = genq_cli("status", job_id, env=env)
    assert missing.returncode == 3
    assert "lost with a restart" in one_error_line(missing)


def test_json_output_of_submit_status_wait_and_cancel(
    genq_cli: Cli, tmp_path: Path, worker: object
) -> None:
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    submitted = genq_cli("submit", str(tmp_path / "p.txt"), "--max-new-tokens", "4", "--json")
    assert submitted.returncode == 0, submitted.stderr
    info = JobInfo.model_validate_json(submitted.stdout)
    assert info.total == 2
    waited = genq_cli("wait", info.id, "--json")
    assert waited.returncode == 0, waited.stderr
    final = JobInfo.model_validate_json(waited.stdout)
    assert (final.id, final.status, final.completed) == (info.id, JobStatus.COMPLETED, 2)
    status = JobInfo.model_validate_json(genq_cli("status", info.id, "--json").stdout)
    assert status.status is JobStatus.COMPLETED
    cancel = genq_cli("cancel", info.id, "--json")
    assert JobInfo.model_validate_json(cancel.stdout).status is JobStatus.COMPLETED


def test_dead_lists_newest_first_and_purge_says_how_many(
    genq_cli: Cli, fresh_redis: RedisProcess
) -> None:
    store = JobStore(connect(fresh_redis.url), 60)
    env = {"GENQ_REDIS_URL": fresh_redis.url}
    job_id = new_job_id()
    for n, reason in enumerate(["not JSON", "task is not genq's", "item index 9 outside"]):
        store.add_dead_letter(
            DeadLetter(
                at=datetime(2030, 1, 1, 0, 0, n, tzinfo=timezone.utc),
                reason=reason,
                queue="generate",
                job_id=job_id if n == 2 else None,
                message="x" * (10 + n),
                message_bytes=10 + n,
            )
        )
    listed = genq_cli("dead", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert rows == [
        ["2030-01-01 00:00:02", "item index 9 outside", job_id, "12"],
        ["2030-01-01 00:00:01", "task is not genq's", "-", "11"],
        ["2030-01-01 00:00:00", "not JSON", "-", "10"],
    ]
    as_json = genq_cli("dead", "--json", "--limit", "2", env=env)
    letters = [DeadLetter.model_validate_json(line) for line in as_json.stdout.splitlines()]
    assert [letter.reason for letter in letters] == ["item index 9 outside", "task is not genq's"]
    assert "2 of 3 dead letters shown" in as_json.stderr

    purged = genq_cli("dead", "--purge", env=env)
    assert purged.returncode == 0
    assert purged.stdout.strip() == "purged 3 dead letter(s)"
    empty = genq_cli("dead", env=env)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert "no dead letters" in empty.stderr
    assert json.loads(genq_cli("dead", "--purge", "--json", env=env).stdout) == {"purged": 0}


def test_help_says_what_the_options_do(genq_cli: Cli) -> None:
    submit = " ".join(genq_cli("submit", "--help").stdout.split())
    assert "Wait for the job and write its results (JSON Lines) here" in submit
    assert "With --wait: write" not in submit
    top = " ".join(genq_cli("--help").stdout.split())
    assert "3 no such job" in top
    assert "124" in top


def test_tenant_options_with_bad_values_are_one_line_and_exit_2(genq_cli: Cli) -> None:
    for args in (
        ("tenants", "set", "acme", "--weight", "0"),
        ("tenants", "set", "acme", "--max-queued-items", "0"),
        ("submit", "-", "--tenant", "bad/name"),
    ):
        done = genq_cli(*args, input="hello\n")
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_tenants_set_changes_only_what_it_is_given(genq_cli: Cli) -> None:
    name = f"merge-{time.time_ns()}"
    assert genq_cli("tenants", "set", name, "--weight", "3").returncode == 0
    assert genq_cli("tenants", "set", name, "--max-jobs-in-progress", "5").returncode == 0
    rows = [json.loads(line) for line in genq_cli("tenants", "--json").stdout.splitlines()]
    mine = next(r for r in rows if r["tenant"] == name)
    assert (mine["weight"], mine["max_jobs_in_progress"], mine["max_queued_items"]) == (
        3.0,
        5,
        None,
    )
    assert genq_cli("tenants", "remove", name).returncode == 0
