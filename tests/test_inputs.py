"""Reading input files: formats, line numbers in errors, limits."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from genq.errors import InputFileError
from genq.producer.inputs import read_items

LIMIT = 1 << 20


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def test_jsonl_items_keep_their_line_numbers(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": "a"}), "", json.dumps({"prompt": "b\nc", "custom_id": "x"})]
    items, labels = read_items(write(tmp_path, "in.jsonl", "\n".join(lines) + "\n"), LIMIT)
    assert items == [{"prompt": "a"}, {"prompt": "b\nc", "custom_id": "x"}]
    assert labels == ["line 1", "line 3"]


def test_txt_is_one_prompt_per_line(tmp_path: Path) -> None:
    items, _ = read_items(write(tmp_path, "in.txt", "first\r\n\n  second 🚀\n"), LIMIT)
    assert items == ["first", "  second 🚀"]


def test_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n[1, 2]\n')
    with pytest.raises(InputFileError) as e:
        read_items(path, LIMIT)
    assert "line 2: invalid JSON" in str(e.value)
    assert "line 3: expected a JSON object" in str(e.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(InputFileError, match="contains no prompts"):
        read_items(write(tmp_path, "in.jsonl", content), LIMIT)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not UTF-8"):
        read_items(write(tmp_path, "in.txt", b"caf\xe9\n"), LIMIT)


def test_file_over_the_size_limit_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="larger than 10 bytes"):
        read_items(write(tmp_path, "in.txt", "x" * 11), 10)


def test_missing_file_is_an_error() -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_items("/nonexistent/prompts.jsonl", LIMIT)


def test_stdin_format_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"prompt": "a"}\n')))
    assert read_items("-", LIMIT)[0] == [{"prompt": "a"}]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"plain prompt\n")))
    assert read_items("-", LIMIT)[0] == ["plain prompt"]
