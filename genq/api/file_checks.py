"""The checks each line of a batch input file passes as it is uploaded: ``LineCheck`` (size,
UTF-8 JSON object, known fields, a unique custom_id, POST to an endpoint genq serves, a body
with a model) and the limits it uses; it keeps what it found (lines, urls, models, the first
invalid lines). The file is stored by ``genq.api.file_store``; its bodies are translated by
``genq.api.lines``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from genq.api.lines import ENDPOINTS
from genq.errors import InputFileError
from genq.producer.inputs import parse_line
from genq.settings import MAX_CUSTOM_ID_CHARS, MAX_FILE_ERRORS_KEPT
from genq.text import shown

MAX_LINE_BYTES = 4 * 1024 * 1024  # one input line (a prompt is at most 1 MiB)
MAX_MODEL_CHARS = 256
MAX_DISTINCT = 8  # urls / models a file records (a valid batch file has one of each)
_LINE_FIELDS = {"custom_id", "method", "url", "body"}


@dataclass
class LineCheck:
    """What reading a batch input file found: its lines, their urls and models, and the
    invalid ones (the first MAX_FILE_ERRORS_KEPT, with line numbers as OpenAI reports them)."""

    lines: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    urls: dict[str, None] = field(default_factory=dict)  # in the order first seen
    models: dict[str, None] = field(default_factory=dict)
    _ids: set[bytes] = field(default_factory=set)

    def add_error(self, line: int, code: str, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_FILE_ERRORS_KEPT:
            self.errors.append({"code": code, "line": line, "message": message, "param": param})

    def check(self, number: int, raw: bytes) -> None:
        """Check one line (``number`` counts from 1); blank lines are skipped."""
        if not raw.strip():
            return
        self.lines += 1
        if len(raw) > MAX_LINE_BYTES:
            self.add_error(number, "line_too_long", f"line is over {MAX_LINE_BYTES} bytes")
            return
        try:
            value = parse_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self.add_error(number, "invalid_json_line", "line is not UTF-8 text")
            return
        except InputFileError as e:
            self.add_error(number, "invalid_json_line", f"line is not valid JSON: {e}")
            return
        if not isinstance(value, dict):
            self.add_error(number, "invalid_json_line", f"expected an object, got {shown(value)}")
            return
        try:
            # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 encoder (Redis,
            # the queue) can write: refused here, for the whole line.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            self.add_error(
                number,
                "invalid_unicode",
                f"the line holds a lone surrogate (\\u{ord(e.object[e.start]):04x}); text must "
                "be valid Unicode",
            )
            return
        unknown = sorted(set(value) - _LINE_FIELDS)
        if unknown:
            self.add_error(
                number,
                "invalid_request",
                f"unknown field {unknown[0][:64]!r}; a line has custom_id, method, url and body",
                unknown[0][:64],
            )
            return
        cid = value.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID_CHARS:
            self.add_error(
                number,
                "invalid_custom_id",
                f"custom_id must be a string of 1-{MAX_CUSTOM_ID_CHARS} characters",
                "custom_id",
            )
            return
        digest = hashlib.blake2b(cid.encode("utf-8", "surrogatepass"), digest_size=12).digest()
        if digest in self._ids:
            self.add_error(
                number,
                "duplicate_custom_id",
                f"custom_id {shown(cid)} is used by an "
                "earlier line; custom_id must be unique in the file",
                "custom_id",
            )
            return
        self._ids.add(digest)
        if value.get("method") != "POST":
            self.add_error(number, "invalid_method", 'method must be "POST"', "method")
            return
        url = value.get("url")
        if url not in ENDPOINTS:
            self.add_error(
                number,
                "invalid_url",
                f"url {shown(url)} is not one genq serves; use {' or '.join(ENDPOINTS)}",
                "url",
            )
            return
        body = value.get("body")
        if not isinstance(body, dict):
            self.add_error(number, "invalid_body", "body must be a JSON object", "body")
            return
        model = body.get("model")
        if isinstance(model, str) and len(model) > MAX_MODEL_CHARS:
            self.add_error(
                number,
                "invalid_value",
                f"body.model is over {MAX_MODEL_CHARS} characters",
                "body.model",
            )
            return
        if not isinstance(model, str) or not model:
            self.add_error(
                number, "missing_required_parameter", "body.model is required", "body.model"
            )
            return
        if len(self.urls) < MAX_DISTINCT:
            self.urls[url] = None
        if len(self.models) < MAX_DISTINCT:
            self.models[model] = None
