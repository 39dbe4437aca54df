"""A worker's Prometheus metrics, served on ``/metrics`` at GENQ_METRICS_PORT (off when unset;
0 picks a free port, which the worker logs).

Counts are exact: items and tokens are counted from the results the store actually wrote
(:meth:`JobStore.record_new`), so a redelivered message counts nothing twice, and the workers'
``genq_items_completed_total`` summed is the jobs' completed items. Labels are bounded: an
error type, a priority, never a prompt, a job id or a tenant.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from genq.schema import PRIORITIES, ItemResult

log = logging.getLogger("genq.worker")

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


# Bucket bounds as prometheus_client's own histograms write them ("0.005", "1.0", "+Inf").
go_float = cast(Callable[[float], str], _untyped_go_float)


class BulkHistogram(Collector):
    """A histogram without labels that takes a batch's observations in one call: exposed as
    prometheus_client's own ``Histogram`` is (``_bucket``, ``_count``, ``_sum``).

    prometheus_client's ``observe`` takes one value a call, under a lock each (~3 us); a
    batch brings hundreds of items, each two observations: a tenth of a null worker's CPU.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = [*buckets, math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_all(self, values: Iterable[float]) -> None:
        """Count each of ``values`` in its bucket."""
        counts = [0] * len(self._bounds)
        total = 0.0
        bounds = self._bounds
        for value in values:
            if value != value:  # NaN: in no bucket (as in a real Histogram), nor in the sum
                continue
            counts[bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(accumulate(counts))
        buckets = [
            (go_float(bound), float(count))
            for bound, count in zip(self._bounds, cumulative, strict=True)
        ]
        return [HistogramMetricFamily(self.name, self.documentation, buckets, total)]


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.completed = Counter(
            "genq_items_completed", "Items that ended with outputs.", registry=r
        )
        self.failed = Counter(
            "genq_items_failed", "Items that ended with an error.", ["error_type"], registry=r
        )
        self.generated_tokens = Counter(
            "genq_generated_tokens", "Tokens generated, over the results written.", registry=r
        )
        self.prompt_tokens = Counter(
            "genq_prompt_tokens", "Prompt tokens of the results written.", registry=r
        )
        self.batch_size = Histogram(
            "genq_batch_size",
            "Sequences per static batch; for continuous batching, rows in the batch when "
            "items finish.",
            buckets=_SIZES,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "genq_batch_tokens", "Tokens a batch generated.", buckets=_TOKENS, registry=r
        )
        self.queue_wait = BulkHistogram(
            "genq_queue_wait_seconds", "From a job's enqueueing to an item's start.", _SECONDS, r
        )
        self.generation = BulkHistogram(
            "genq_generation_seconds", "From an item's start to its result.", _SECONDS, r
        )
        self.queue_depth = Gauge(
            "genq_queue_depth",
            "Items waiting to be handed to workers, by priority: the whole queue's, the same "
            "on every worker of it (take the max across workers, not the sum).",
            ["priority"],
            registry=r,
        )
        self.in_flight = Gauge(
            "genq_items_in_flight", "Items this worker holds that have not ended.", registry=r
        )
        self.up = Gauge("genq_worker_up", "1 while the worker serves its queue.", registry=r)
        self.kv_used = Gauge(
            "genq_kv_budget_used_ratio",
            "Padded tokens of the last batch over the worker's batch token budget.",
            registry=r,
        )
        for priority in PRIORITIES:
            self.queue_depth.labels(priority.value)

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on ``port`` (0: a free one); returns the port."""
        server, _ = start_http_server(port, registry=self.registry)
        bound = int(server.server_port)
        log.warning("metrics on http://0.0.0.0:%d/metrics", bound)
        return bound

    def results(self, stored: Sequence[ItemResult]) -> None:
        """Count results the store wrote (each once)."""
        # Summed first: each inc takes the counter's lock, and a batch brings hundreds.
        completed = generated = prompt = 0
        failed: defaultdict[str, int] = defaultdict(int)
        waits: list[float] = []
        generations: list[float] = []
        for result in stored:
            if result.error is None:
                completed += 1
            else:
                failed[result.error.type] += 1
            if result.usage is not None:
                generated += result.usage.completion_tokens
                prompt += result.usage.prompt_tokens
            timing = result.timing
            if timing is not None and result.error is None:
                waits.append(max(timing.started_at - timing.enqueued_at, 0.0))
                generations.append(max(timing.finished_at - timing.started_at, 0.0))
        self.queue_wait.observe_all(waits)
        self.generation.observe_all(generations)
        if completed:
            self.completed.inc(completed)
        for error_type, count in failed.items():
            self.failed.labels(error_type).inc(count)
        if generated:
            self.generated_tokens.inc(generated)
        if prompt:
            self.prompt_tokens.inc(prompt)

    def batch(self, rows: int, tokens: int) -> None:
        """A static batch ended, or items of a continuous batch of ``rows`` rows did."""
        self.batch_size.observe(rows)
        self.batch_tokens.observe(tokens)

    def kv(self, padded_tokens: int, budget: int) -> None:
        """The batch holds (or will reach) ``padded_tokens`` of the ``budget``."""
        self.kv_used.set(padded_tokens / budget if budget else 0.0)
