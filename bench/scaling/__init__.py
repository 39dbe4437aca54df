"""How genq scales on one Redis: ``python -m bench.scaling`` (method and figures:
docs/scaling.md).

* ``curve``: the ``null`` engine at a fixed cost per batch (GENQ_NULL_BATCH_MS, a GPU-bound
  worker's shape) with 1, 2, 4, 8 workers on one Redis: throughput, efficiency against N x one
  worker, the Redis server's CPU and the workers' own; then the same at no batch cost
  (queue-bound) to find where one Redis saturates.
* ``probes``: what is read from Redis (INFO cpu/commandstats/stats/memory) and /proc, the
  worker processes, one timed job.
* ``memory``: what stored results cost (measured on 100,000 items, extrapolated to 1M), and
  what reduces it.
* ``text_engine``: the ``null`` engine with outputs of a chosen length (bench only).
* ``report``: JSON, the PNG and the Markdown tables for docs/scaling.md.
"""
