"""``genq run``: the whole job on one machine, with no Redis installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from genq.schema import ItemResult


def genq_run(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GENQ_MODEL": str(model),
        "GENQ_DEVICE": "cpu",
        # Point the default URL at a closed port: `genq run` must not need any Redis.
        "GENQ_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    return subprocess.run(
        [sys.executable, "-m", "genq", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )


def test_run_does_the_whole_job_with_an_embedded_server(tmp_path: Path, tiny_model: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    prompts = [f"Describe product {i} 🚀" for i in range(40)]
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    result = genq_run(tmp_path, tiny_model, str(source), "-o", "out.jsonl", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    results = [
        ItemResult.model_validate_json(line)
        for line in (tmp_path / "out.jsonl").read_text().splitlines()
    ]
    assert [r.prompt for r in results] == prompts
    assert all(r.error is None and r.usage.completion_tokens > 0 for r in results)
    assert "40 results written" in result.stderr


def test_run_refuses_a_bad_file_before_starting_anything(tmp_path: Path, tiny_model: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "a"}\nnot json\n')
    result = genq_run(tmp_path, tiny_model, str(source), "-o", "out.jsonl")
    assert result.returncode == 2
    assert "line 2: invalid JSON" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
