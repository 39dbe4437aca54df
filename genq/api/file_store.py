"""API files in Redis: uploads streamed in and checked line by line as batch input, and the
output and error files a batch writes. A file is a metadata hash and a list of byte chunks
(``keyspace.file``/``file_data``); no step holds a whole file in memory."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import redis
from redis.client import Pipeline

from genq import keyspace
from genq.api.errors import ApiError
from genq.api.lines import ENDPOINTS
from genq.errors import InputFileError
from genq.producer.inputs import parse_line
from genq.settings import (
    FILE_CHUNK_BYTES,
    MAX_CUSTOM_ID_CHARS,
    MAX_FILE_ERRORS_KEPT,
    MAX_FILE_TTL_S,
)
from genq.text import shown

READ_BYTES = 1024 * 1024  # an upload is read this much at a time
MAX_LINE_BYTES = 4 * 1024 * 1024  # one input line (a prompt is at most 1 MiB)
MAX_MODEL_CHARS = 256
MAX_DISTINCT = 8  # urls / models a file records (a valid batch file has one of each)
_LINE_FIELDS = {"custom_id", "method", "url", "body"}
ORPHAN_TTL_S = 3600  # chunks of a file not yet committed (its writer may have died)


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


def file_object(fields: dict[str, str]) -> dict[str, Any]:
    """A file's metadata as OpenAI's FileObject."""
    expires = fields.get("expires_at")
    return {
        "id": fields["id"],
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(float(fields["created_at"])),
        "filename": fields["filename"],
        "purpose": fields["purpose"],
        "status": "processed",
        "expires_at": int(float(expires)) if expires else None,
        "status_details": None,
    }


def _metadata(
    file_id: str, tenant: str, filename: str, purpose: str, size: int, ttl_s: int
) -> dict[str, str]:
    """The fields every file's record has (created now, expiring after ``ttl_s``)."""
    now = time.time()
    return {
        "id": file_id,
        "tenant": tenant,
        "bytes": str(size),
        "created_at": repr(now),
        "filename": filename,
        "purpose": purpose,
        "expires_at": repr(now + ttl_s),
    }


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileStore:
    """Files of every tenant; each call names the tenant, and another tenant's file is
    missing to it (404)."""

    def __init__(self, client: redis.Redis, data: redis.Redis, default_ttl_s: int) -> None:
        self.redis = client  # decoded: metadata hashes, indexes
        self.data = data  # binary: the chunks
        self.default_ttl_s = default_ttl_s

    def upload(
        self,
        tenant: str,
        filename: str,
        stream: IO[bytes],
        *,
        max_bytes: int,
        max_lines: int,
        ttl_s: int | None,
    ) -> tuple[dict[str, str], LineCheck, str]:
        """Store a batch input file read from ``stream``, checking each line as it passes;
        return its metadata, what the check found, and the content's SHA-256."""
        file_id = new_file_id()
        check = LineCheck()
        sha = hashlib.sha256()
        size, number = 0, 0
        pending = b""
        writer = self.writer(file_id)
        try:
            while block := stream.read(READ_BYTES):
                size += len(block)
                if size > max_bytes:
                    raise ApiError(
                        413,
                        f"the file is over {max_bytes} bytes, this service's "
                        "limit per file; split it",
                        code="file_too_large",
                    )
                sha.update(block)
                writer.write(block)
                pending += block
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    number += 1
                    check.check(number, raw)
                if len(pending) > MAX_LINE_BYTES:
                    number += 1
                    check.add_error(number, "line_too_long", f"line is over {MAX_LINE_BYTES} bytes")
                    raise ApiError(
                        400, f"line {number} is over {MAX_LINE_BYTES} bytes", code="line_too_long"
                    )
                if check.lines > max_lines:
                    raise ApiError(
                        400,
                        f"the file has more than {max_lines} requests, this "
                        "service's limit per batch; split it",
                        code="too_many_lines",
                    )
            if pending:
                check.check(number + 1, pending)
            if check.lines > max_lines:
                raise ApiError(
                    400,
                    f"the file has more than {max_lines} requests, this service's limit per "
                    "batch; split it",
                    code="too_many_lines",
                )
            if check.lines == 0:
                raise ApiError(
                    400, "the file holds no requests (it is empty or blank)", code="empty_file"
                )
            writer.close()
        except BaseException:
            self.redis.delete(keyspace.file_data(file_id))
            raise
        ttl = ttl_s or self.default_ttl_s
        fields = {
            **_metadata(file_id, tenant, filename, "batch", size, ttl),
            "lines": str(check.lines),
            "errors": json.dumps(check.errors),
            "error_count": str(check.error_count),
            "urls": json.dumps(list(check.urls)),
            "models": json.dumps(list(check.models)),
        }
        self._commit(tenant, file_id, fields, ttl)
        return fields, check, sha.hexdigest()

    def writer(self, file_id: str) -> ChunkWriter:
        return ChunkWriter(self.data, keyspace.file_data(file_id))

    def commit_output(
        self, pipe: Pipeline, tenant: str, file_id: str, filename: str, size: int, ttl_s: int
    ) -> None:
        """Queue on ``pipe`` (the caller's transaction) what records a file a batch wrote with
        :meth:`writer` (purpose ``batch_output``)."""
        fields = _metadata(file_id, tenant, filename, "batch_output", size, ttl_s)
        self._commit_commands(pipe, tenant, file_id, fields, ttl_s)

    def _commit(self, tenant: str, file_id: str, fields: dict[str, str], ttl_s: int) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            self._commit_commands(pipe, tenant, file_id, fields, ttl_s)
            pipe.execute()

    def _commit_commands(
        self, pipe: Pipeline, tenant: str, file_id: str, fields: dict[str, str], ttl_s: int
    ) -> None:
        created = float(fields["created_at"])
        index = keyspace.tenant_files(tenant)
        pipe.hset(keyspace.file(file_id), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(keyspace.file(file_id), ttl_s)
        pipe.expire(keyspace.file_data(file_id), ttl_s)
        pipe.zadd(index, {file_id: created})
        # No file outlives this: older index entries name files that are gone.
        pipe.zremrangebyscore(index, "-inf", created - max(self.default_ttl_s, MAX_FILE_TTL_S))

    def get(self, tenant: str, file_id: str) -> dict[str, str]:
        """A file's metadata; 404 when it does not exist or is another tenant's."""
        from genq.api.errors import not_found

        try:
            fields: dict[str, str] = self.redis.hgetall(keyspace.file(file_id))  # type: ignore[assignment]
        except ValueError:  # not an id of genq's form
            fields = {}
        if not fields or fields.get("tenant") != tenant:
            raise not_found("file", file_id)
        return fields

    def content(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes, one stored chunk at a time."""
        index = 0
        while True:
            chunk: list[bytes] = self.data.lrange(keyspace.file_data(file_id), index, index)  # type: ignore[assignment]
            if not chunk:
                return
            yield chunk[0]
            index += 1

    def lines(self, file_id: str) -> Iterator[tuple[int, bytes]]:
        """The file's non-blank lines with their numbers (from 1), read chunk by chunk."""
        pending = b""
        number = 0
        for chunk in self.content(file_id):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                number += 1
                if raw.strip():
                    yield number, raw
        if pending.strip():
            yield number + 1, pending

    def delete(self, tenant: str, file_id: str) -> None:
        self.get(tenant, file_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.file(file_id), keyspace.file_data(file_id))
            pipe.zrem(keyspace.tenant_files(tenant), file_id)
            pipe.execute()

    def page(
        self, tenant: str, after: str | None, limit: int, newest_first: bool, purpose: str | None
    ) -> tuple[list[dict[str, str]], bool]:
        """One page of a tenant's files after the file ``after``; and whether more follow."""
        return page_of(
            self.redis,
            keyspace.tenant_files(tenant),
            keyspace.file,
            after,
            limit,
            newest_first,
            keep=lambda f: purpose is None or f["purpose"] == purpose,
        )


class ChunkWriter:
    """Appends bytes to a file's chunk list, FILE_CHUNK_BYTES at a time. Until the file is
    committed its chunks expire after ORPHAN_TTL_S: a writer killed half-way leaves nothing
    behind for long."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis, self.key = client, key
        self.buffer = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= FILE_CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(self.key, bytes(self.buffer))
                pipe.expire(self.key, ORPHAN_TTL_S)
                pipe.execute()
            self.buffer.clear()

    def close(self) -> None:
        self.flush()


def page_of(
    client: redis.Redis,
    index_key: str,
    record_key: Any,
    after: str | None,
    limit: int,
    newest_first: bool,
    keep: Any = None,
) -> tuple[list[dict[str, str]], bool]:
    """A page of records listed in the zset ``index_key``, after the id ``after``: records
    that no longer exist are pruned from the index on the way. Returns (records, has_more)."""
    rank = -1
    if after is not None:
        found = (client.zrevrank if newest_first else client.zrank)(index_key, after)
        if found is None:
            return [], False
        rank = int(found)  # type: ignore[arg-type]
    out: list[dict[str, str]] = []
    start = rank + 1
    while len(out) <= limit:
        read = client.zrevrange if newest_first else client.zrange
        ids: list[str] = read(index_key, start, start + limit)  # type: ignore[assignment]
        if not ids:
            break
        with client.pipeline(transaction=False) as pipe:
            for ident in ids:
                pipe.hgetall(record_key(ident))
            rows: list[dict[str, str]] = pipe.execute()
        gone = [i for i, row in zip(ids, rows, strict=True) if not row]
        if gone:
            client.zrem(index_key, *gone)
        start += len(ids) - len(gone)
        out += [row for row in rows if row and (keep is None or keep(row))]
        if len(ids) <= limit:
            break
    return out[:limit], len(out) > limit
