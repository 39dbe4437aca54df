"""The producer-side install: `pip install genq` brings no torch or transformers, and submits and
reads jobs; the commands that run the model say which extra to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RedisProcess

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
