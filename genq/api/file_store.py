"""API files in Redis: uploads streamed in (each line checked as it passes, by
``genq.api.file_checks.LineCheck``) and the output and error files a batch writes; the OpenAI
file object, file ids, the chunk writer and the paging of a Redis index. A file is a metadata
hash and a list of byte chunks (``keyspace.file``/``file_data``); no step holds a whole file in
memory."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import IO, Any

import redis
from redis.client import Pipeline

from genq import keyspace
from genq.api.errors import ApiError
from genq.api.file_checks import MAX_LINE_BYTES, LineCheck
from genq.settings import FILE_CHUNK_BYTES, MAX_FILE_TTL_S

READ_BYTES = 1024 * 1024  # an upload is read this much at a time
ORPHAN_TTL_S = 3600  # chunks of a file not yet committed (its writer may have died)


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
