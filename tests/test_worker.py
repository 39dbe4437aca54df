"""The worker process: refuses pickles and malformed messages, fails fast on a missing model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RedisProcess, StartWorker, WorkerProcess, free_port

from genq.broker import GENERATE_TASK
from genq.producer.client import Client
from genq.settings import Settings


class Exploit:
    """Unpickling this would create a directory: proof that nothing was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def wait_for_log(worker: WorkerProcess, text: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.output():
        assert time.monotonic() < deadline, f"{text!r} not in worker log:\n{worker.output()}"
        time.sleep(0.1)


def test_a_pickled_message_is_refused_and_the_worker_goes_on(
    worker: WorkerProcess, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    client.celery.send_task(
        GENERATE_TASK, args=[Exploit(marker)], serializer="pickle", queue=client.settings.queue
    )
    wait_for_log(worker, "Refusing to deserialize untrusted content of type pickle")
    assert not marker.exists()
    job_id = client.submit(["still serving"], {"max_new_tokens": 2})
    assert client.wait(job_id, timeout_s=60).completed == 1


def run_worker_cli(
    redis_server: RedisProcess, model: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GENQ_REDIS_URL": redis_server.url, "GENQ_MODEL": model, **env}
    full_env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(
        [sys.executable, "-m", "genq", "worker", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_hub_model_without_network_fails_fast_with_advice(redis_server: RedisProcess) -> None:
    started = time.monotonic()
    # A closed local port stands in for an unreachable hub.
    result = run_worker_cli(
        redis_server,
        "gpt2",
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HOME=str(Path("/nonexistent-hf-home")),
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "Set GENQ_MODEL to a local directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_directory_is_a_clear_error(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    result = run_worker_cli(redis_server, str(tmp_path / "no-such-model"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--pool=prefork", "-c", "--concurrency=4"])
def test_pool_options_are_refused_with_the_way_to_scale(
    redis_server: RedisProcess, tiny_model: Path, option: str
) -> None:
    result = run_worker_cli(redis_server, str(tiny_model), option, GENQ_ENGINE="null")
    assert result.returncode == 1
    assert "start more `genq worker` processes" in result.stderr


def test_sigterm_hands_buffered_items_back_and_nothing_runs_twice(
    start_worker: StartWorker, settings: Settings
) -> None:
    queue = "sigterm-test"
    client = Client(settings=settings.model_copy(update={"queue": queue}))
    first = start_worker(queue=queue, max_batch_size="4")
    job_id = client.submit([f"prompt {i} about coffee" for i in range(200)], {"max_new_tokens": 48})
    deadline = time.monotonic() + 60
    while client.status(job_id).done < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.stop(signal.SIGTERM)
    assert first.process.returncode == 0
    assert client.status(job_id).done < 200  # the job was interrupted mid-way
    start_worker(queue=queue, max_batch_size="16")
    info = client.wait(job_id, timeout_s=120)
    assert (info.status.value, info.completed, info.failed) == ("completed", 200, 0)
    results = list(client.iter_results(job_id))
    assert [r.index for r in results] == list(range(200))


def test_a_worker_warns_once_at_start_when_redis_has_no_append_only_file(
    worker: WorkerProcess,
) -> None:
    # The session's test server runs without an append-only file.
    assert worker.output().count("has no append-only file") == 1
