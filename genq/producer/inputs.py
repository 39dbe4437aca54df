"""Reading job input files: JSON Lines, plain text, or standard input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

from genq.errors import InputFileError
from genq.settings import MAX_JSON_DEPTH
from genq.text import shown

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
            value = parse_line(line)
        except InputFileError as e:
            errors.append(f"line {number}: {e}")
            continue
        if not isinstance(value, dict):
            errors.append(
                f'line {number}: expected a JSON object like {{"prompt": "..."}}, '
                f"got {shown(value)}"
            )
            continue
        items.append(value)
        labels.append(f"line {number}")
    if len(errors) == 1:
        raise InputFileError(f"{name}: {errors[0]} (nothing was enqueued)")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        listed = "\n".join(errors[:MAX_ERRORS_SHOWN]) + (
            f"\n... and {more} more" if more > 0 else ""
        )
        raise InputFileError(
            f"{name}: {len(errors)} malformed line(s), nothing enqueued:\n{listed}"
        )
    if not items:
        raise InputFileError(f"{name} contains no prompts (it is empty or only blank lines)")
    return items, labels


def parse_line(line: str) -> Any:
    """One line of JSON Lines, as standard JSON only: no NaN or Infinity (Python's json reads
    them; JSON has no such values), no number too large for a float, no key twice in an
    object (which one would win?), and at most MAX_JSON_DEPTH levels of nesting. Raises
    :class:`InputFileError` saying what is wrong (without the line number)."""
    try:
        value = json.loads(
            line,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except InputFileError:
        raise
    except json.JSONDecodeError as e:
        raise InputFileError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise InputFileError(_too_deep(f"more than {MAX_JSON_DEPTH}")) from None
    except ValueError:  # an integer of more digits than Python converts (4300 by default)
        raise InputFileError(
            f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InputFileError(_too_deep(str(depth)))
    return value


def _too_deep(levels: str) -> str:
    return (
        f"the JSON value is nested {levels} levels deep; the limit is {MAX_JSON_DEPTH} "
        "(MAX_JSON_DEPTH): a line is an object with a prompt and flat params"
    )


def _refuse_constant(name: str) -> Any:
    raise InputFileError(
        f"invalid JSON: {name} is not a JSON value (JSON has no NaN or Infinity); "
        "give a finite number"
    )


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InputFileError(f"invalid JSON: the number {text[:40]} is too large for a float")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InputFileError(
                    f"key {shown(key)} appears twice in one object; give each key once"
                )
            seen.add(key)
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0, ``{}`` is 1)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, level + 1) for child in children)
    return deepest


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
