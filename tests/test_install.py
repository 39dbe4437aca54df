"""The producer-side install: `pip install genq` brings no torch or transformers, and submits and
reads jobs; the commands that run the model say which extra to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import RedisProcess, free_port, listening

ROOT = Path(__file__).resolve().parents[1]
WORKER_STACK = ("torch", "transformers", "tokenizers", "safetensors", "ctranslate2")


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install genq` (no extras) from a copy of this checkout."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "genq", source / "genq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path_factory.mktemp("venv") / "producer"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def genq(venv: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GENQ_REDIS_URL": redis_url, "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    command = [str(venv / "bin" / "genq"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_plain_install_has_no_torch_and_submits_and_reads_jobs(
    light_venv: Path, redis_server: RedisProcess, tmp_path: Path
) -> None:
    python = str(light_venv / "bin" / "python")
    probe = "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n)])"
    found = subprocess.run([python, "-c", probe, *WORKER_STACK], capture_output=True, text=True)
    assert found.stdout.strip() == "[]"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a tagline for a bakery\nDescribe a red bicycle\n")
    submitted = genq(light_venv, redis_server.url, "submit", str(prompts))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    status = genq(light_venv, redis_server.url, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert '"total":2' in status.stdout
    cancelled = genq(light_venv, redis_server.url, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr


@pytest.mark.parametrize("command", [["worker"], ["random-model", "m"], ["run", "p", "-o", "o"]])
def test_commands_that_run_the_model_name_the_extra_to_install(
    light_venv: Path, redis_server: RedisProcess, command: list[str]
) -> None:
    result = genq(light_venv, redis_server.url, *command)
    assert result.returncode == 2
    assert "pip install 'genq[worker]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_plain_install_serves_the_http_api(
    light_venv: Path, redis_server: RedisProcess, tmp_path: Path
) -> None:
    port = free_port()
    key = "sk-genq-light-install-0123456"
    env = {**os.environ, "GENQ_REDIS_URL": redis_server.url, "GENQ_API_KEYS": key, "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        [str(light_venv / "bin" / "genq"), "api", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gpt2", "prompt": "hi"},
        }
        uploaded = httpx.post(
            f"http://127.0.0.1:{port}/v1/files",
            headers={"authorization": f"Bearer {key}"},
            files={"file": ("in.jsonl", json.dumps(line).encode())},
            data={"purpose": "batch"},
        )
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["object"] == "file"
    finally:
        process.terminate()
        process.wait(20)
