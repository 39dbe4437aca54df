"""Prometheus metrics, scraped from a real worker and a real `genq api` with prometheus_client's
own parser: exact counts after a job, bounded labels."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from api_support import api_for
from conftest import RedisProcess, StartWorker
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genq.producer.client import Client
from genq.settings import Settings
from genq.worker.metrics import BulkHistogram

QUEUE = "metrics"
KEY = "sk-genq-metrics-0123456789ab"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_worker_s_counts_are_exact_after_a_job(
    start_worker: StartWorker, settings: Settings
) -> None:
    worker = start_worker(queue=QUEUE, metrics_port="0", max_batch_size="8")
    found = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", worker.output())
    assert found, worker.output()
    url = f"http://127.0.0.1:{found.group(1)}/metrics"
    client = Client(settings=settings.model_copy(update={"queue": QUEUE}))
    too_long = " ".join(["word"] * 400)  # past the tiny model's 128 positions
    job_id = client.submit([f"tagline {i}" for i in range(12)] + [too_long], {"max_new_tokens": 6})
    info = client.wait(job_id, timeout_s=120)
    results = list(client.iter_results(job_id))
    metrics = scrape(url)
    assert metrics[("genq_items_completed_total", ())] == info.completed == 12
    failed = ("genq_items_failed_total", (("error_type", "context_length_exceeded"),))
    assert metrics[failed] == info.failed == 1
    generated = sum(r.usage.completion_tokens for r in results if r.usage)
    assert metrics[("genq_generated_tokens_total", ())] == generated > 0
    prompt = sum(r.usage.prompt_tokens for r in results if r.usage)
    assert metrics[("genq_prompt_tokens_total", ())] == prompt
    assert metrics[("genq_batch_size_count", ())] >= 1
    assert metrics[("genq_queue_wait_seconds_count", ())] == 12
    assert metrics[("genq_worker_up", ())] == 1
    assert ("genq_queue_depth", (("priority", "high"),)) in metrics
    assert 0 <= metrics[("genq_kv_budget_used_ratio", ())] <= 1
    # A redelivered message counts nothing twice: its results were written already.
    client.store.record({job_id: results[:3]})
    assert scrape(url)[("genq_items_completed_total", ())] == 12
    labels = {label for (_, pairs) in metrics for label, _ in pairs}
    assert labels <= {"error_type", "priority", "le"}


@pytest.fixture
def api(redis_server: RedisProcess, tmp_path: Path):  # type: ignore[no-untyped-def]
    with api_for(redis_server.url, tmp_path / "api.log", QUEUE, KEY) as server:
        yield server


def test_a_bulk_histogram_is_exposed_as_prometheus_clients_own() -> None:
    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 7.5, 299.9, 5000.0]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(
        "genq_test_seconds", "Test.", buckets=(0.005, 0.5, 1, 300), registry=theirs
    )
    for value in values:
        reference.observe(value)
    bulk = BulkHistogram("genq_test_seconds", "Test.", (0.005, 0.5, 1, 300), ours)
    bulk.observe_all(values[:4])
    bulk.observe_all([])
    bulk.observe_all(values[4:])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(ours) == samples(theirs)
    assert samples(ours)[("genq_test_seconds_bucket", "0.005")] == 3  # le: bounds included
    assert samples(ours)[("genq_test_seconds_count", "")] == len(values)


def test_the_api_counts_requests_by_route_template_and_status(api) -> None:  # type: ignore[no-untyped-def]
    before = scrape(f"{api.url}/metrics")
    auth = {"authorization": f"Bearer {KEY}"}
    for _ in range(3):
        assert httpx.get(f"{api.url}/healthz").status_code == 200
    assert httpx.get(f"{api.url}/v1/batches/batch_nope", headers=auth).status_code == 404
    assert httpx.get(f"{api.url}/v1/batches/batch_other", headers=auth).status_code == 404
    assert httpx.get(f"{api.url}/v1/models").status_code == 401
    assert httpx.request("PATCH", f"{api.url}/healthz").status_code == 405
    time.sleep(0.1)
    after = scrape(f"{api.url}/metrics")

    def delta(route: str, method: str, status: str) -> float:
        key = (
            "genq_api_requests_total",
            (("method", method), ("route", route), ("status", status)),
        )
        return after.get(key, 0) - before.get(key, 0)

    assert delta("/healthz", "GET", "200") == 3
    assert delta("/v1/batches/{batch_id}", "GET", "404") == 2  # the template, not the ids
    assert delta("unmatched", "GET", "401") == 1  # refused before any route
    assert delta("/healthz", "PATCH", "405") == 1
    routes = {dict(pairs).get("route") for (name, pairs) in after if "route" in dict(pairs)}
    assert not any("batch_nope" in str(r) for r in routes)
