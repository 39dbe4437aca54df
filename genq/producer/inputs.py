"""Reading job input files: JSON Lines, plain text, or standard input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from genq.errors import InputFileError

InputFormat = Literal["auto", "jsonl", "txt"]
MAX_ERRORS_SHOWN = 20
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


def read_items(
    source: str, max_bytes: int, fmt: InputFormat = "auto"
) -> tuple[list[dict[str, Any] | str], list[str]]:
    """Parse ``source`` (a path, or ``-`` for stdin) into items and their labels ("line N").

    ``.jsonl``: one object per line with ``prompt``, optional ``custom_id`` and ``params``.
    ``.txt``: one prompt per line. Blank lines are skipped. Any malformed line fails the whole
    file, naming its line number.
    """
    data = _read_bytes(source, max_bytes)
    name = "standard input" if source == "-" else source
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"{name} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
        ) from e
    if fmt == "auto":
        fmt = _detect(source, text)
    items: list[dict[str, Any] | str] = []
    labels: list[str] = []
    errors: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if fmt == "txt":
            items.append(line)
            labels.append(f"line {number}")
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {number}: invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(value, dict):
            errors.append(
                f'line {number}: expected a JSON object like {{"prompt": "..."}}, '
                f"got {type(value).__name__}"
            )
            continue
        items.append(value)
        labels.append(f"line {number}")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = "\n".join(errors[:MAX_ERRORS_SHOWN]) + (
            f"\n... and {more} more" if more > 0 else ""
        )
        raise InputFileError(f"{name}: {len(errors)} malformed line(s), nothing enqueued:\n{shown}")
    if not items:
        raise InputFileError(f"{name} contains no prompts (it is empty or only blank lines)")
    return items, labels


def _read_bytes(source: str, max_bytes: int) -> bytes:
    too_big = (
        f"{'standard input' if source == '-' else source} is larger than {max_bytes} bytes; "
        "split it into several jobs or raise GENQ_MAX_INPUT_FILE_BYTES"
    )
    if source == "-":
        data = sys.stdin.buffer.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InputFileError(too_big)
        return data
    path = Path(source)
    try:
        if path.stat().st_size > max_bytes:
            raise InputFileError(too_big)
        return path.read_bytes()
    except FileNotFoundError as e:
        raise InputFileError(f"no such file: {source}") from e
    except IsADirectoryError as e:
        raise InputFileError(f"{source} is a directory; give a .jsonl or .txt file") from e
    except PermissionError as e:
        raise InputFileError(f"cannot read {source}: permission denied") from e


def _detect(source: str, text: str) -> Literal["jsonl", "txt"]:
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".txt":
        return "txt"
    return "jsonl" if text.lstrip().startswith("{") else "txt"
