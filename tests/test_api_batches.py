"""The OpenAI Batch API end to end: the real `genq api` server, a real worker with the tiny
model, a real Redis, driven by the official `openai` client."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from api_support import ApiProcess, WebhookReceiver, start_api, tenants_file
from conftest import RedisProcess, StartWorker, free_port

QUEUE = "api-batches"
KEY_A = "sk-genq-tenant-a-0123456789"
KEY_B = "sk-genq-tenant-b-0123456789"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MODEL = "tiny-gpt2"
UPLOAD_LIMIT = 2_000_000


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver(fail_first=True).start()
    yield hooks
    hooks.stop()


@pytest.fixture(scope="module")
def api(
    redis_server: RedisProcess,
    start_worker: StartWorker,
    receiver: WebhookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
) -> Iterator[ApiProcess]:
    start_worker(queue=QUEUE, max_batch_size="16", max_wait_ms="100")
    tmp = tmp_path_factory.mktemp("api")
    tenants = tenants_file(
        tmp / "tenants.toml",
        {
            "a": {"keys": [KEY_A], "webhook_url": receiver.url, "webhook_secret": SECRET},
            "b": {"keys": [KEY_B]},
        },
    )
    server = start_api(
        free_port(),
        tmp / "api.log",
        {
            "GENQ_REDIS_URL": redis_server.url,
            "GENQ_QUEUE": QUEUE,
            "GENQ_API_TENANTS_FILE": str(tenants),
            "GENQ_WEBHOOK_ALLOW_PRIVATE": "1",
            "GENQ_CANCEL_SETTLE_S": "2",
            "GENQ_MAX_INPUT_FILE_BYTES": str(UPLOAD_LIMIT),
            "GENQ_MODEL": str(tiny_model),
            "GENQ_CHUNK_SIZE": "4",
        },
    )
    yield server
    server.stop()


def client(api: ApiProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=60)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": MODEL, "prompt": prompt, "max_tokens": 8, **body},
    }


def upload(oa: openai.OpenAI, lines: list[dict[str, Any]], name: str = "in.jsonl") -> str:
    return oa.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch").id


def wait_for(oa: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = oa.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.3)


def parse(oa: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    # Lines end with "\n" only; the text may hold what splitlines() also splits on.
    lines = oa.files.content(file_id).text.split("\n")
    assert all(x == x.splitlines()[0] for x in lines if x)  # no other line break, escaped
    return [json.loads(x) for x in lines if x]


def test_a_batch_runs_and_its_output_file_holds_openai_completion_objects_in_input_order(
    api: ApiProcess,
) -> None:
    oa = client(api)
    lines = [
        line(f"req-{i}", p)
        for i, p in enumerate(
            ["Write a tagline for a bakery", "人工智能", 'Emoji 🚀 "quotes"', "x"]
        )
    ]
    lines.append(line("greedy-1", "Le café est prêt", temperature=0))
    lines.append(line("greedy-2", "Le café est prêt", temperature=0))
    lines.append(line("two", "Describe a bicycle", n=2, stop=["\n"], seed=7))
    lines.append(line("refused", "hello", logprobs=3))
    file_id = upload(oa, lines)
    assert oa.files.retrieve(file_id).purpose == "batch"
    batch = oa.batches.create(
        input_file_id=file_id,
        endpoint="/v1/completions",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status == "in_progress"
    assert batch.metadata == {"run": "nightly"}
    done = wait_for(oa, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (8, 7, 1)
    assert done.completed_at
    assert done.finalizing_at
    assert done.in_progress_at
    assert done.usage is not None
    assert done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.model == MODEL
    out = parse(oa, done.output_file_id)
    assert [o["custom_id"] for o in out] == [x["custom_id"] for x in lines[:-1]]
    for o in out:
        assert o["error"] is None
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["object"] == "text_completion"
        assert body["model"] == MODEL
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["usage"]["total_tokens"] == (
            body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )
    by_id = {o["custom_id"]: o["response"]["body"] for o in out}
    assert by_id["greedy-1"]["choices"][0]["text"] == by_id["greedy-2"]["choices"][0]["text"]
    assert len(by_id["two"]["choices"]) == 2
    errors = parse(oa, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["refused"]
    assert errors[0]["response"]["status_code"] == 400
    assert "log probabilities" in errors[0]["response"]["body"]["error"]["message"]
    # The output file is the tenant's, listed with purpose batch_output.
    assert oa.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_invalid_lines_fail_the_batch_with_their_line_numbers(api: ApiProcess) -> None:
    oa = client(api)
    raw = b"\n".join(
        [
            json.dumps(line("ok", "fine")).encode(),
            b"{not json",
            json.dumps(
                {"method": "POST", "url": "/v1/completions", "body": {"model": MODEL}}
            ).encode(),
            json.dumps(line("ok", "again")).encode(),
            json.dumps({**line("emb", "x"), "url": "/v1/embeddings"}).encode(),
        ]
    )
    file_id = oa.files.create(file=("bad.jsonl", io.BytesIO(raw)), purpose="batch").id
    batch = oa.batches.create(
        input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.failed_at
    assert batch.errors is not None
    assert batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "invalid_custom_id"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
    ]


def test_listing_with_limit_2_pages_through_every_batch_and_ends(api: ApiProcess) -> None:
    oa = client(api)
    file_id = upload(oa, [line("one", "hi")])
    made = [
        oa.batches.create(
            input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = oa.batches.list(limit=2)
    assert len(first.data) == 2
    assert first.has_more
    assert [b.id for b in first.data] == made[::-1][:2]  # newest first
    seen = [b.id for b in oa.batches.list(limit=2)]  # auto-pagination: must end
    assert set(made) <= set(seen)
    assert len(seen) == len(set(seen))


def test_cancel_mid_run_ends_cancelled_with_the_partial_output(api: ApiProcess) -> None:
    oa = client(api)
    lines = [
        line(f"c{i}", f"Write about item {i}", max_tokens=60, temperature=0.8) for i in range(160)
    ]
    batch = oa.batches.create(
        input_file_id=upload(oa, lines), endpoint="/v1/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while (oa.batches.retrieve(batch.id).request_counts.completed or 0) < 1:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelling = oa.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at
    done = wait_for(oa, batch.id, {"cancelled"}, 30)
    assert done.cancelled_at
    out = parse(oa, done.output_file_id)
    assert 1 <= len(out) < 160
    assert done.request_counts is not None
    assert done.request_counts.completed == len(out)
    ids = [o["custom_id"] for o in out]
    assert ids == sorted(ids, key=lambda c: int(c[1:]))  # input order
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(wait_for(oa, _small_done_batch(oa), {"completed"}).id)


def _small_done_batch(oa: openai.OpenAI) -> str:
    return oa.batches.create(
        input_file_id=upload(oa, [line("s", "hi")]),
        endpoint="/v1/completions",
        completion_window="24h",
    ).id


def test_a_window_that_closes_first_sends_unrun_lines_to_the_error_file_as_batch_expired(
    api: ApiProcess,
) -> None:
    oa = client(api)
    lines = [line(f"e{i}", f"Story {i}", max_tokens=100, temperature=0.9) for i in range(300)]
    batch = oa.batches.create(
        input_file_id=upload(oa, lines), endpoint="/v1/completions", completion_window="2s"
    )  # genq takes windows other than 24h
    done = wait_for(oa, batch.id, {"expired", "completed"}, 60)
    assert done.status == "expired"
    assert done.expired_at
    errors = parse(oa, done.error_file_id)
    expired = [e for e in errors if e["error"] and e["error"]["code"] == "batch_expired"]
    assert expired
    assert all(e["response"] is None for e in expired)
    out = parse(oa, done.output_file_id)
    assert len(out) + len(errors) == 300
    assert done.request_counts is not None
    assert done.request_counts.failed == len(errors)


def test_another_tenant_gets_404_for_the_first_tenants_batch_and_files(api: ApiProcess) -> None:
    a, b = client(api, KEY_A), client(api, KEY_B)
    file_id = upload(a, [line("x", "hi")])
    batch = a.batches.create(
        input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
    )
    for call in (
        lambda: b.batches.retrieve(batch.id),
        lambda: b.batches.cancel(batch.id),
        lambda: b.files.retrieve(file_id),
        lambda: b.files.content(file_id),
        lambda: b.files.delete(file_id),
        lambda: b.batches.create(
            input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as missing:
        b.batches.retrieve("batch_" + "0" * 32)
    assert missing.value.status_code == 404
    assert batch.id not in {x.id for x in b.batches.list()}


def test_a_missing_or_wrong_key_is_401(api: ApiProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(api, "sk-genq-not-a-key-000000000").batches.list()
    bare = httpx.get(f"{api.url}/v1/batches")
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error"
    basic = httpx.get(f"{api.url}/v1/batches", headers={"authorization": f"Basic {KEY_A}"})
    assert basic.status_code == 401


def test_an_oversized_upload_is_413_and_stores_nothing(api: ApiProcess) -> None:
    oa = client(api)
    before = {f.id for f in oa.files.list(purpose="batch")}
    big = jsonl([line(f"b{i}", "y" * 1000) for i in range(2500)])
    assert len(big) > UPLOAD_LIMIT
    with pytest.raises(openai.APIStatusError) as refused:
        oa.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")
    assert refused.value.status_code == 413
    assert {f.id for f in oa.files.list(purpose="batch")} == before


def test_a_retried_create_with_one_idempotency_key_makes_one_batch(api: ApiProcess) -> None:
    oa = client(api)
    file_id = upload(oa, [line("i", "hi")])
    headers = {"Idempotency-Key": f"create-{time.time_ns()}"}
    first = oa.batches.create(
        input_file_id=file_id,
        endpoint="/v1/completions",
        completion_window="24h",
        extra_headers=headers,
    )
    again = oa.batches.create(
        input_file_id=file_id,
        endpoint="/v1/completions",
        completion_window="24h",
        extra_headers=headers,
    )
    assert again.id == first.id
    assert [b.id for b in oa.batches.list(limit=100)].count(first.id) == 1
    with pytest.raises(openai.ConflictError):
        oa.batches.create(
            input_file_id=file_id,
            endpoint="/v1/completions",
            completion_window="24h",
            metadata={"other": "body"},
            extra_headers=headers,
        )


def test_the_end_of_a_batch_is_signed_webhook_redelivered_after_a_500(
    api: ApiProcess, receiver: WebhookReceiver
) -> None:
    oa = client(api)
    batch = oa.batches.create(
        input_file_id=upload(oa, [line("w", "hi")]),
        endpoint="/v1/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 60
    while len(receiver.for_data(batch.id)) < 2:
        assert time.monotonic() < deadline, receiver.requests
        time.sleep(0.2)
    first, second = receiver.for_data(batch.id)[:2]
    assert (first.status, second.status) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verifier = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    event = verifier.webhooks.unwrap(second.body, second.headers)
    assert event.type == "batch.completed"
    assert event.data.id == batch.id
    assert oa.batches.retrieve(batch.id).status == "completed"  # told only once it is
    with pytest.raises(openai.InvalidWebhookSignatureError):
        verifier.webhooks.unwrap(second.body + b" ", second.headers)


def test_a_key_is_checked_before_the_body_is_read(api: ApiProcess) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-key-000000"
            b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        answer = s.recv(4096)  # no body sent: a 401 that did not wait for it
    assert answer.startswith(b"HTTP/1.1 401")


def test_a_batch_nobody_polls_still_expires_on_time_and_says_so(
    api: ApiProcess, receiver: WebhookReceiver
) -> None:
    oa = client(api)
    lines = [line(f"q{i}", f"Story {i}", max_tokens=100, temperature=0.9) for i in range(300)]
    batch = oa.batches.create(
        input_file_id=upload(oa, lines), endpoint="/v1/completions", completion_window="1s"
    )
    deadline = time.monotonic() + 60
    while not [r for r in receiver.for_data(batch.id) if r.status == 200]:
        assert time.monotonic() < deadline, receiver.for_data(batch.id)
        time.sleep(0.2)
    delivered = next(r for r in receiver.for_data(batch.id) if r.status == 200)
    assert json.loads(delivered.body)["type"] == "batch.expired"
    done = oa.batches.retrieve(batch.id)
    assert done.status == "expired"
    assert done.error_file_id


def test_one_completion_through_the_queue_and_the_models_list(api: ApiProcess) -> None:
    oa = client(api)
    assert MODEL in {m.id for m in oa.models.list()}
    done = oa.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0)
    assert done.object == "text_completion"
    assert done.choices[0].text
    assert done.usage is not None
    assert done.usage.completion_tokens <= 5
    again = oa.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0)
    assert again.choices[0].text == done.choices[0].text
    with pytest.raises(openai.BadRequestError) as refused:
        oa.completions.create(model=MODEL, prompt="Hello", echo=True)
    assert refused.value.body["param"] == "echo"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="gpt-4o", prompt="Hello")
    # The tiny model has no chat template: the error says what to set.
    with pytest.raises(openai.BadRequestError) as no_template:
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "GENQ_CHAT_TEMPLATE" in str(no_template.value)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        (
            "post",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": "f",
                    "endpoint": "/v1/completions",
                    "metadata": {"\ud800": "v"},
                }
            },
        ),
        (
            "post",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": "f",
                    "endpoint": "/v1/completions",
                    "metadata": {"k": "\ud800"},
                }
            },
        ),
        ("post", "/v1/batches", {"content": b"[" * 100_000 + b"]" * 100_000}),
        ("post", "/v1/batches", {"json": {"input_file_id": 5, "endpoint": None}}),
        ("post", "/v1/completions", {"json": {"model": MODEL, "prompt": "x", "\ud800": 1}}),
        ("post", "/v1/completions", {"content": b"[" * 100_000 + b"]" * 100_000}),
        ("post", "/v1/completions", {"content": b"\xff\xfe"}),
        ("post", "/v1/completions", {"json": {"model": MODEL, "prompt": "x\ud800"}}),
        (
            "post",
            "/v1/chat/completions",
            {"json": {"model": MODEL, "messages": [{"role": "user", "content": "x"}] * 300}},
        ),
        ("post", "/v1/files", {"files": {"file": ("a", b"x")}, "data": {"purpose": "fine-tune"}}),
        ("post", "/v1/files", {"data": {"purpose": "batch"}}),
        ("get", "/v1/files?limit=0", {}),
        ("get", "/v1/batches?limit=1000", {}),
        ("get", "/v1/batches/batch_..%2F..%2Fetc", {}),
        ("get", "/v1/files/%00", {}),
        ("delete", "/v1/batches/x", {}),
    ],
)
def test_hostile_requests_get_a_clear_4xx_never_a_500(
    api: ApiProcess, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    headers = {"authorization": f"Bearer {KEY_A}"}
    if "json" in kwargs:  # httpx would refuse to encode a lone surrogate itself
        kwargs = {
            "content": json.dumps(kwargs.pop("json")).encode(),
            "headers": {**headers, "content-type": "application/json"},
        }
    answer = httpx.request(
        method, f"{api.url}{path}", headers=kwargs.pop("headers", headers), timeout=30, **kwargs
    )
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    assert answer.json()["error"]["message"]
