"""genq's native endpoints (/v1/jobs), health, the OpenAPI schema and the request limits, on
the real `genq api` server with a real worker, through httpx."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from api_support import ApiProcess, start_api
from conftest import RedisProcess, StartWorker, free_port

QUEUE = "api-jobs"
KEY = "sk-genq-native-0123456789abc"
OTHER = "sk-genq-native-other-0123456"
TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def api(
    redis_server: RedisProcess,
    start_worker: StartWorker,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
) -> Iterator[ApiProcess]:
    start_worker(queue=QUEUE, max_batch_size="8", max_wait_ms="50", chat_template=TEMPLATE)
    tmp = tmp_path_factory.mktemp("api-jobs")
    server = start_api(
        free_port(),
        tmp / "api.log",
        {
            "GENQ_REDIS_URL": redis_server.url,
            "GENQ_QUEUE": QUEUE,
            "GENQ_API_KEYS": f"{KEY},{OTHER}",
            "GENQ_MODEL": str(tiny_model),
            "GENQ_CHUNK_SIZE": "2",
        },
    )
    yield server
    server.stop()


def http(api: ApiProcess, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {key}"}, timeout=60)


def wait_job(h: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job: dict[str, Any] = h.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled", "expired"):
            return job
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_json_job_runs_and_its_results_page_in_input_order(api: ApiProcess) -> None:
    h = http(api)
    items = [{"prompt": f"Tagline {i}", "custom_id": f"t{i}"} for i in range(7)]
    items[3]["params"] = {"max_new_tokens": 3}
    made = h.post(
        "/v1/jobs",
        json={"items": items, "params": {"max_new_tokens": 6}, "metadata": {"team": "ads"}},
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["object"] == "job"
    assert job["total"] == 7
    assert job["metadata"] == {"team": "ads"}
    assert wait_job(h, job["id"])["status"] == "completed"
    first = h.get(f"/v1/jobs/{job['id']}/results", params={"offset": 0, "limit": 4}).json()
    assert [r["custom_id"] for r in first["data"]] == ["t0", "t1", "t2", "t3"]
    assert first["next_offset"] == 4
    rest = h.get(f"/v1/jobs/{job['id']}/results", params={"offset": 4, "limit": 4}).json()
    assert [r["custom_id"] for r in rest["data"]] == ["t4", "t5", "t6"]
    assert rest["next_offset"] is None
    assert first["data"][3]["usage"]["completion_tokens"] <= 3
    assert job["id"] in [j["id"] for j in h.get("/v1/jobs").json()["data"]]


def test_a_jsonl_upload_makes_a_job_with_the_query_options(api: ApiProcess) -> None:
    h = http(api)
    body = b'{"prompt": "one"}\n\n{"prompt": "two", "custom_id": "b"}\n'
    made = h.post(
        "/v1/jobs",
        content=body,
        headers={"content-type": "application/jsonl"},
        params={"params": json.dumps({"max_new_tokens": 4}), "expires_in_s": "600"},
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["total"] == 2
    assert job["params"]["max_new_tokens"] == 4
    assert job["expires_at"]
    assert wait_job(h, job["id"])["completed"] == 2


def test_a_retried_create_with_one_idempotency_key_is_one_job(api: ApiProcess) -> None:
    h = http(api)
    body = {"items": ["a", "b"], "idempotency_key": f"k-{time.time_ns()}"}
    assert h.post("/v1/jobs", json=body).json()["id"] == h.post("/v1/jobs", json=body).json()["id"]
    headers = {"Idempotency-Key": f"h-{time.time_ns()}"}
    one = h.post("/v1/jobs", json={"items": ["c"]}, headers=headers)
    two = h.post("/v1/jobs", json={"items": ["c"]}, headers=headers)
    assert one.json()["id"] == two.json()["id"]
    assert two.headers["idempotent-replayed"] == "true"
    conflict = h.post("/v1/jobs", json={"items": ["d"]}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.headers["x-should-retry"] == "false"


def test_cancel_keeps_finished_results_and_another_tenant_sees_404(api: ApiProcess) -> None:
    h, other = http(api), http(api, OTHER)
    job = h.post(
        "/v1/jobs",
        json={"items": [f"Story {i}" for i in range(40)], "params": {"max_new_tokens": 60}},
    ).json()
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/results"):
        assert other.get(path).status_code == 404
    assert other.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert job["id"] not in [j["id"] for j in other.get("/v1/jobs").json()["data"]]
    cancelled = h.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert h.get("/v1/jobs/not-a-job").status_code == 404


def test_bad_input_is_one_clear_400_in_openais_error_shape(api: ApiProcess) -> None:
    h = http(api)
    for body, needle in (
        ({"items": []}, "items"),
        ({"items": ["x"], "params": {"temprature": 1}}, "temperature"),
        ({"items": ["x"], "params": {"max_new_tokens": True}}, "integer"),
        ({"items": ["x"], "colour": 1}, "colour"),
    ):
        answer = h.post("/v1/jobs", json=body)
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert needle in error["message"]
    broken = h.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    big = h.post(
        "/v1/jobs", content=b"x" * (17 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413


def test_health_readiness_and_the_openapi_schema(api: ApiProcess) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"] >= 1
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/batches", "/v1/files", "/v1/jobs", "/v1/completions"} <= set(schema["paths"])
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_chat_lines_run_with_the_workers_template_in_a_batch_and_alone(api: ApiProcess) -> None:
    oa = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    lines = [
        {
            "custom_id": f"chat-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny-gpt2",
                "max_completion_tokens": 6,
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Slogan {i}"},
                ],
            },
        }
        for i in range(3)
    ]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    file_id = oa.files.create(file=("chat.jsonl", io.BytesIO(data)), purpose="batch").id
    batch = oa.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while (batch := oa.batches.retrieve(batch.id)).status != "completed":
        assert batch.status in ("in_progress", "finalizing"), batch
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert batch.output_file_id is not None
    out = [json.loads(x) for x in oa.files.content(batch.output_file_id).text.split("\n") if x]
    assert [o["custom_id"] for o in out] == ["chat-0", "chat-1", "chat-2"]
    body = out[0]["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    alone = oa.chat.completions.create(
        model="tiny-gpt2",
        max_tokens=6,
        temperature=0,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Slogan 0"},
        ],
    )
    assert alone.choices[0].message.content == body["choices"][0]["message"]["content"]


def test_idempotency_keys_are_each_tenants_own(api: ApiProcess) -> None:
    key = f"shared-{time.time_ns()}"
    mine = http(api).post("/v1/jobs", json={"items": ["p1"], "idempotency_key": key})
    theirs = http(api, OTHER).post("/v1/jobs", json={"items": ["p2"], "idempotency_key": key})
    assert (mine.status_code, theirs.status_code) == (201, 201), theirs.text
    assert mine.json()["id"] != theirs.json()["id"]
    assert mine.json()["id"] not in theirs.text


@pytest.mark.parametrize(
    "query",
    [
        {"expires_in_s": "abc"},
        {"metadata": "[1]"},
        {"params": "[1]"},
        {"params": "{"},
        {"expires_in_s": "-1"},
    ],
)
def test_bad_options_of_a_jsonl_upload_are_400(api: ApiProcess, query: dict[str, str]) -> None:
    answer = http(api).post(
        "/v1/jobs",
        content=b'{"prompt": "x"}\n',
        params=query,
        headers={"content-type": "application/jsonl"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]


def test_a_bad_jsonl_line_names_its_line_not_a_server_path(api: ApiProcess) -> None:
    answer = http(api).post(
        "/v1/jobs",
        content=b'{"prompt": "x"}\n{"prompt": \n',
        headers={"content-type": "application/jsonl"},
    )
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "line 2" in message
    assert "/tmp" not in message


def _tenant_of(key: str) -> str:
    import hashlib

    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def test_over_a_quota_jobs_and_batches_get_429_with_retry_after_and_nothing_is_made(
    api: ApiProcess, redis_server: RedisProcess
) -> None:
    from genq import keyspace
    from genq.producer.client import Client
    from genq.schema import TenantPolicy
    from genq.settings import Settings

    admin = Client(settings=Settings(redis_url=redis_server.url, queue=QUEUE))
    tenant = _tenant_of(OTHER)
    for job_id in admin.store.redis.smembers(keyspace.tenant_unfinished(tenant)):
        admin.cancel(job_id)  # earlier tests' jobs of this tenant: the quota starts empty
    admin.set_tenant_policy(tenant, TenantPolicy(max_jobs_in_progress=1))
    try:
        h = http(api, OTHER)
        first = h.post(
            "/v1/jobs", json={"items": ["a long story"] * 30, "params": {"max_new_tokens": 60}}
        )
        assert first.status_code == 201
        jobs_before = [j["id"] for j in h.get("/v1/jobs").json()["data"]]
        refused = h.post("/v1/jobs", json={"items": ["x"], "priority": "high"})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert "max_jobs_in_progress=1" in refused.json()["error"]["message"]
        # No job made (the first may have started meanwhile: ids, not statuses, are compared).
        assert [j["id"] for j in h.get("/v1/jobs").json()["data"]] == jobs_before
        line = {
            "custom_id": "one",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "tiny-gpt2", "prompt": "Hello", "max_tokens": 2},
        }
        upload = h.post(
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", io.BytesIO(json.dumps(line).encode()))},
        )
        assert upload.status_code == 200, upload.text
        batch = h.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 429, batch.text
        assert h.get("/v1/batches").json()["data"] == []
        h.post(f"/v1/jobs/{first.json()['id']}/cancel")
        assert h.post("/v1/jobs", json={"items": ["x"]}).status_code == 201  # room again
    finally:
        admin.set_tenant_policy(tenant, None)


def test_a_job_s_priority_is_kept_and_a_bad_one_is_a_400(api: ApiProcess) -> None:
    h = http(api)
    job = h.post("/v1/jobs", json={"items": ["Hi"], "priority": "high"}).json()
    assert job["priority"] == "high"
    assert wait_job(h, job["id"])["priority"] == "high"
    assert h.post("/v1/jobs", json={"items": ["Hi"]}).json()["priority"] == "normal"
    bad = h.post("/v1/jobs", json={"items": ["Hi"], "priority": "urgent"})
    assert bad.status_code == 400
    assert "priority" in bad.json()["error"]["message"]
