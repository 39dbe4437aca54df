"""Reading input files: formats, line numbers in errors, limits."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from genq.errors import InputFileError
from genq.producer.inputs import parse_line, read_items
from genq.settings import MAX_JSON_DEPTH

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


# --- only standard JSON, bounded, and every message naming its line ----------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "params": {"temperature": NaN}}', "NaN is not a JSON value"),
        ('{"prompt": "a", "params": {"temperature": Infinity}}', "Infinity is not a JSON value"),
        ('{"prompt": "a", "params": {"top_p": -Infinity}}', "-Infinity is not a JSON value"),
        ('{"prompt": "a", "params": {"temperature": 1e999}}', "1e999 is too large for a float"),
        ('{"prompt": "a", "params": {"seed": ' + "9" * 5000 + "}}", "more than 4300 digits"),
        ('{"prompt": "a", "prompt": "b"}', 'key "prompt" appears twice in one object'),
        ('{"prompt": "a", "params": {"top_k": 1, "top_k": 2}}', 'key "top_k" appears twice'),
        ("[" * 100_000, "nested more than 16 levels deep; the limit is 16 (MAX_JSON_DEPTH)"),
        ('{"prompt": "a", "x": ' + "[" * 16 + "]" * 16 + "}", "nested 17 levels deep"),
        ('{"prompt": "a"', "invalid JSON: Expecting ',' delimiter"),
        ('{"prompt": "tab\tinside"}', "invalid JSON: Invalid control character"),
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "float-overflow",
        "huge-integer",
        "duplicate-key",
        "duplicate-nested-key",
        "100000-levels",
        "17-levels",
        "truncated",
        "raw-tab",
    ],
)
def test_non_standard_or_unbounded_json_is_one_clear_error(
    tmp_path: Path, line: str, message: str
) -> None:
    good = json.dumps({"prompt": "fine"})
    path = write(tmp_path, "in.jsonl", "\n".join([good] * 6 + [line, good]) + "\n")
    with pytest.raises(InputFileError) as e:
        read_items(path, LIMIT)
    text = str(e.value)
    assert "\n" not in text
    assert f"{path}: line 7: " in text
    assert message in text
    assert text.endswith("(nothing was enqueued)")


def test_sixteen_levels_are_allowed() -> None:
    assert MAX_JSON_DEPTH == 16
    value = parse_line('{"prompt": "a", "x": ' + "[" * 15 + "]" * 15 + "}")
    assert value["prompt"] == "a"


def test_standard_json_still_parses_as_before(tmp_path: Path) -> None:
    item = {
        "prompt": "人工智能 🚀\u0000",
        "params": {"temperature": 0.5, "stop": ["\n"], "seed": 2**62},
    }
    items, _ = read_items(write(tmp_path, "in.jsonl", json.dumps(item) + "\n"), LIMIT)
    assert items == [item]


@pytest.mark.parametrize(
    ("line", "kind"),
    [("[1, 2]", "an array"), ('"a prompt"', '"a prompt"'), ("42", "42"), ("null", "null")],
)
def test_a_line_that_is_not_an_object_says_what_it_is(tmp_path: Path, line: str, kind: str) -> None:
    with pytest.raises(InputFileError) as e:
        read_items(write(tmp_path, "in.jsonl", line + "\n"), LIMIT, "jsonl")
    assert f'line 1: expected a JSON object like {{"prompt": "..."}}, got {kind}' in str(e.value)


def test_several_bad_lines_are_listed_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", "[1]\nNaN\n{}\n" + "[]\n" * 30)
    with pytest.raises(InputFileError) as e:
        read_items(path, LIMIT)
    lines = str(e.value).splitlines()
    assert lines[0].endswith("32 malformed line(s), nothing enqueued:")  # {} is an object
    assert lines[1].startswith("line 1: expected a JSON object")
    assert lines[2].startswith("line 2: invalid JSON: NaN")
    assert lines[-1] == "... and 12 more"
