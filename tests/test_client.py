"""The Python client: a content pipeline's view, without a GPU stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from genq import keyspace
from genq.errors import (
    ConfigError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    WaitTimeoutError,
)
from genq.producer.client import Client
from genq.settings import Settings, load_settings, redact_url


def test_producer_side_never_loads_the_worker_torch_or_transformers() -> None:
    code = (
        "import sys, json; import genq; from genq import Client; import genq.producer.cli; "
        "import genq.api.app; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'ctranslate2'} or m.startswith('genq.worker'))))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert loaded == []


def test_invalid_job_raises_and_lists_every_problem(client: Client) -> None:
    with pytest.raises(InvalidJobError) as e:
        client.submit([{"prompt": ""}, {"prompt": "ok", "params": {"top_k": -1}}, {"nope": 1}])
    message = str(e.value)
    assert "3 problem(s)" in message
    assert "item 0: prompt" in message
    assert "item 1: params.top_k" in message
    assert "item 2: prompt: Field required" in message


def test_limits_are_enforced_with_the_setting_to_change(settings: Settings) -> None:
    small = Client(
        settings=settings.model_copy(update={"max_items_per_job": 2, "max_prompt_bytes": 8})
    )
    with pytest.raises(InvalidJobError, match="GENQ_MAX_ITEMS_PER_JOB"):
        small.submit(["a", "b", "c"])
    with pytest.raises(InvalidJobError, match="GENQ_MAX_PROMPT_BYTES"):
        small.submit(["a prompt longer than eight bytes"])
    capped = Client(settings=settings.model_copy(update={"max_job_bytes": 10}))
    with pytest.raises(InvalidJobError, match=r"hold 12 bytes; the limit is 10 .*GENQ_MAX_JOB"):
        capped.submit(["abcd", "efgh", "ijkl"])


def test_submit_accepts_plain_strings_and_metadata(client: Client) -> None:
    job_id = client.submit(["one", "two"], {"max_new_tokens": 3}, metadata={"campaign": "xmas"})
    info = client.status(job_id)
    assert (info.total, info.metadata, info.params.max_new_tokens) == (2, {"campaign": "xmas"}, 3)
    assert info.id in {j.id for j in client.jobs()}


def test_wait_times_out_without_a_worker_and_the_job_keeps_its_place(settings: Settings) -> None:
    idle = Client(settings=settings.model_copy(update={"queue": "nobody-listens"}))
    job_id = idle.submit(["waiting"])
    with pytest.raises(WaitTimeoutError, match="still queued"):
        idle.wait(job_id, timeout_s=0.3, poll_interval_s=0.1)
    assert idle.status(job_id).status.value == "queued"


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(JobNotFoundError):
        client.status("f" * 32)


def test_passwords_are_redacted_from_urls() -> None:
    assert redact_url("redis://user:pa55@host:6380/1") == "redis://user:***@host:6380/1"
    assert redact_url("rediss://:pa55@host/0") == "rediss://:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pa/ss@host:6379/0",
        "redis://:p#w?x@host:1/0",
        "redis://user:s3cr@t@host/0",
        "redis://host/0?password=pa55",
    ],
)
def test_passwords_that_confuse_url_parsers_are_redacted_too(url: str) -> None:
    for secret in ("pa/ss", "p#w?x", "s3cr@t", "pa55"):
        assert secret not in redact_url(url)


def test_items_that_are_not_prompts_are_reported(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="item 1: expected a prompt string"):
        client.submit(["fine", 42])  # type: ignore[list-item]


def test_a_retried_submit_with_the_same_idempotency_key_returns_the_same_job(
    client: Client,
) -> None:
    key = f"campaign-42-{time.time_ns()}"
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    queued_before = client.store.queue_length("nobody-reads-this")
    idle = Client(settings=client.settings.model_copy(update={"queue": "nobody-reads-this"}))
    first = idle.submit(["a", "b"], idempotency_key=key)
    queued = client.store.queue_length("nobody-reads-this")
    assert idle.submit(["a", "b"], idempotency_key=key) == first
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before + 1
    assert client.store.queue_length("nobody-reads-this") == queued
    assert queued > queued_before
    assert idle.submit(["a", "b"], idempotency_key=key + "-other") != first


@pytest.mark.parametrize(
    ("items", "params", "options"),
    [
        (["a", "c"], None, {}),  # another prompt
        (["a", "b"], {"temperature": 0.5}, {}),  # other parameters
        (["b", "a"], None, {}),  # the same prompts in another order
        (["a", "b"], None, {"expires_in_s": 60}),  # another deadline
    ],
    ids=["prompt", "params", "order", "deadline"],
)
def test_an_idempotency_key_reused_for_a_different_job_is_refused_and_enqueues_nothing(
    client: Client, items: list[str], params: dict[str, float] | None, options: dict[str, float]
) -> None:
    idle = Client(settings=client.settings.model_copy(update={"queue": "nobody-reads-this"}))
    key = f"conflict-{time.time_ns()}"
    first = idle.submit(["a", "b"], idempotency_key=key)
    jobs_before = client.store.redis.zcard(keyspace.jobs_index())
    queued = client.store.queue_length("nobody-reads-this")
    with pytest.raises(IdempotencyConflictError, match=f"already used for job {first}"):
        idle.submit(items, params, idempotency_key=key, **options)  # type: ignore[arg-type]
    assert client.store.redis.zcard(keyspace.jobs_index()) == jobs_before
    assert client.store.queue_length("nobody-reads-this") == queued
    assert idle.submit(["a", "b"], idempotency_key=key) == first  # the same content still works


@pytest.mark.parametrize("name", ["dead", "unacked", "unacked_index", "unacked_mutex"])
def test_a_queue_named_like_one_of_genqs_own_keys_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"GENQ_QUEUE: '{name}' is the name of one of genq"):
        load_settings(queue=name)


def test_a_retried_submit_at_a_quota_gets_its_job_back_and_a_new_job_is_refused(
    client: Client,
) -> None:
    from genq.errors import QuotaExceededError
    from genq.schema import TenantPolicy

    tenant = f"quota-{time.time_ns()}"
    idle = Client(settings=client.settings.model_copy(update={"queue": "nobody-reads-this"}))
    idle.set_tenant_policy(tenant, TenantPolicy(max_jobs_in_progress=1))
    try:
        key = f"retry-at-quota-{time.time_ns()}"
        first = idle.submit(["a", "b"], idempotency_key=key, tenant=tenant)
        assert idle.submit(["a", "b"], idempotency_key=key, tenant=tenant) == first
        with pytest.raises(QuotaExceededError, match="max_jobs_in_progress=1"):
            idle.submit(["c"], tenant=tenant)
        assert idle.tenant_usage(tenant).jobs_in_progress == 1
        idle.cancel(first)
        assert idle.tenant_usage(tenant).jobs_in_progress == 0
    finally:
        idle.set_tenant_policy(tenant, None)


def test_at_a_quota_a_reused_key_for_other_content_is_a_conflict_not_a_quota(
    client: Client,
) -> None:
    from genq.errors import QuotaExceededError
    from genq.schema import TenantPolicy

    tenant = f"quota-conflict-{time.time_ns()}"
    idle = Client(settings=client.settings.model_copy(update={"queue": "nobody-reads-this"}))
    idle.set_tenant_policy(tenant, TenantPolicy(max_jobs_in_progress=1))
    try:
        key = f"conflict-at-quota-{time.time_ns()}"
        idle.submit(["a"], idempotency_key=key, tenant=tenant)
        with pytest.raises(IdempotencyConflictError):  # permanent: no point retrying later
            idle.submit(["other"], idempotency_key=key, tenant=tenant)
        with pytest.raises(QuotaExceededError):
            idle.submit(["other"], idempotency_key=key + "-new", tenant=tenant)
    finally:
        idle.set_tenant_policy(tenant, None)


def test_idempotency_keys_are_each_tenants_own(client: Client) -> None:
    idle = Client(settings=client.settings.model_copy(update={"queue": "nobody-reads-this"}))
    key = f"shared-key-{time.time_ns()}"
    first = idle.submit(["a"], idempotency_key=key, tenant="tenant-one")
    second = idle.submit(["a"], idempotency_key=key, tenant="tenant-two")
    assert first != second
    assert idle.status(second).tenant == "tenant-two"
    assert idle.submit(["a"], idempotency_key=key, tenant="tenant-one") == first
