"""API files in Redis (genq.api.file_store): uploads checked line by line as they are stored
(genq.api.file_checks), their limits, and what a file that is not valid batch input reports."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import redis
from conftest import RedisProcess

from genq.api.errors import ApiError
from genq.api.file_store import FileStore
from genq.connection import connect, connect_binary


@pytest.fixture
def files(redis_server: RedisProcess) -> FileStore:
    return FileStore(connect(redis_server.url), connect_binary(redis_server.url), 3600)


def line(custom_id: str, **extra: Any) -> bytes:
    body = {"model": "m", "prompt": "p"}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body, **extra}
    ).encode()


def test_a_file_is_stored_byte_for_byte_and_read_back_in_chunks(files: FileStore) -> None:
    data = b"\n".join(line(f"c{i}") for i in range(3000)) + b"\n"
    fields, check, _ = files.upload(
        "t", "in.jsonl", io.BytesIO(data), max_bytes=10**8, max_lines=10**6, ttl_s=None
    )
    assert b"".join(files.content(fields["id"])) == data
    assert (check.lines, check.error_count) == (3000, 0)
    assert [n for n, _ in files.lines(fields["id"])][:3] == [1, 2, 3]
    assert fields["expires_at"]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_the_line_limit_holds_with_or_without_a_final_newline(
    files: FileStore, trailing_newline: bool
) -> None:
    data = b"\n".join(line(f"c{i}") for i in range(3)) + (b"\n" if trailing_newline else b"")
    with pytest.raises(ApiError) as refused:
        files.upload("t", "in.jsonl", io.BytesIO(data), max_bytes=10**8, max_lines=2, ttl_s=None)
    assert refused.value.status == 400


def test_a_refused_upload_leaves_no_data_behind(files: FileStore) -> None:
    client: redis.Redis = files.redis
    before = set(client.scan_iter("genq:file:*"))
    with pytest.raises(ApiError) as refused:
        files.upload(
            "t",
            "in.jsonl",
            io.BytesIO(b"x" * 3_000_000),
            max_bytes=2_000_000,
            max_lines=10,
            ttl_s=None,
        )
    assert refused.value.status == 413
    assert set(client.scan_iter("genq:file:*")) == before


def test_invalid_lines_are_reported_with_their_numbers_and_codes(files: FileStore) -> None:
    rows = [
        line("a"),
        b"",  # blank: skipped, still counted as a line number
        b"[1, 2]",
        b'{"custom_id": "b", "custom_id": "c"}',
        line("a"),
        line("d", method="GET"),
        line("e", extra=1),
        json.dumps(
            {"custom_id": "f", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p"}}
        ).encode(),
        b"\xff\xfe",
        line("g", url="/v1/embeddings"),
        json.dumps(
            {
                "custom_id": "h",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "m" * 300},
            }
        ).encode(),
        b'{"custom_id": "s", "method": "POST", "url": "/v1/completions", '
        b'"body": {"model": "m", "prompt": "x\\ud800"}}',
    ]
    _, check, _ = files.upload(
        "t", "in.jsonl", io.BytesIO(b"\n".join(rows)), max_bytes=10**6, max_lines=100, ttl_s=None
    )
    found = [(e["line"], e["code"]) for e in check.errors]
    assert found == [
        (3, "invalid_json_line"),
        (4, "invalid_json_line"),
        (5, "duplicate_custom_id"),
        (6, "invalid_method"),
        (7, "invalid_request"),
        (8, "missing_required_parameter"),
        (9, "invalid_json_line"),
        (10, "invalid_url"),
        (11, "invalid_value"),
        (12, "invalid_unicode"),
    ]
    assert check.lines == 11


def test_another_tenants_file_is_missing(files: FileStore) -> None:
    fields, _, _ = files.upload(
        "t", "in.jsonl", io.BytesIO(line("a")), max_bytes=10**6, max_lines=10, ttl_s=None
    )
    for call in (
        lambda: files.get("u", fields["id"]),
        lambda: files.delete("u", fields["id"]),
        lambda: files.get("t", "../../etc"),
        lambda: files.get("t", "file-x"),
    ):
        with pytest.raises(ApiError) as missing:
            call()
        assert missing.value.status == 404
