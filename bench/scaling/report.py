"""The scaling bench's outputs: the PNG and the Markdown tables docs/scaling.md quotes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIN_CALLS = 0.05  # commands rarer than this per item are summed in one row
TTL_RATES = (100, 1_000)  # sustained items/s, for the stored-results-under-a-TTL table
TTLS = (("7 days (default)", 7 * 86_400), ("1 day", 86_400), ("1 hour", 3_600))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (ax_curve, ax_queue), (ax_eff, ax_cpu) = axes
    styles = (("curve", "o-", "C0", "GPU-bound shape"), ("saturation", "s-", "C3", "queue-bound"))
    for key, style, color, shape in styles:
        points = result.get(key) or []
        if not points:
            continue
        n = [p["workers"] for p in points]
        label = f"{points[0]['batch_ms']} ms per batch ({shape})"
        ax = ax_curve if key == "curve" else ax_queue
        ax.plot(n, [p["items_per_s"] for p in points], style, color=color, label=label)
        if points[0]["ideal_items_per_s"]:
            ideal = [p["ideal_items_per_s"] for p in points]
            ax.plot(n, ideal, "--", color="grey", label="ideal: N x one worker")
            ax_eff.plot(n, [p["efficiency"] for p in points], style, color=color, label=label)
        if key == "saturation":
            at_core = [p["summary"]["broker_items_per_s_at_one_core"] for p in points]
            ax.axhline(
                min(at_core),
                ls=":",
                color="black",
                label="one Redis core, extrapolated (items / Redis CPU-s)",
            )
        cpu = [p["summary"]["broker_cpu_pct_of_core"] for p in points]
        ax_cpu.plot(n, cpu, style, color=color, label=label)
        ax.set_title(f"throughput, {label}")
    ax_eff.axhline(1.0, ls="--", color="grey", label="ideal")
    ax_eff.set_ylim(0, 1.15)
    ax_cpu.axhline(100.0, ls=":", color="black", label="one core")
    ax_eff.set_title("efficiency = T(N) / (N x T(1))")
    ax_cpu.set_title("Redis server CPU over the run")
    ticks = sorted({p["workers"] for k in ("curve", "saturation") for p in result.get(k) or []})
    for ax, ylabel in (
        (ax_curve, "items / s (submit to last result read)"),
        (ax_queue, "items / s (submit to last result read)"),
        (ax_eff, "efficiency"),
        (ax_cpu, "% of one core"),
    ):
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        if ticks:
            ax.set_xticks(ticks)
    fig.suptitle(result.get("machine", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_table(points: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workers | items | s (submit) | items/s | ideal (N x 1 worker) | efficiency "
        "| Redis CPU (% of a core) "
        "| Redis µs/item | workers' CPU (all) | producer CPU | all processes | Redis calls/item |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        s = p["summary"]
        ideal = f"{p['ideal_items_per_s']:,.0f}" if p["ideal_items_per_s"] else "–"
        eff = f"{p['efficiency']:.2f}" if p["efficiency"] is not None else "–"
        everything = sum(s[k] for k in s if k.endswith("cpu_pct_of_core"))
        lines.append(
            f"| {p['workers']} | {p['items']:,} | {s['seconds']:.2f} ({s['submit_s']:.2f}) | "
            f"{p['items_per_s']:,.0f} | {ideal} | {eff} | "
            f"{s['broker_cpu_pct_of_core']:.0f} % | {s['broker_cpu_us_per_item']:.1f} | "
            f"{s['workers_cpu_pct_of_core']:.0f} % | {s['producer_cpu_pct_of_core']:.0f} % | "
            f"{everything:.0f} % | {s['broker_calls_per_item']:.2f} |"
        )
    return lines


def command_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Per-item commands of one run per column (name -> the run's broker delta)."""
    names = list(runs)
    lines = [
        "| command | " + " | ".join(f"calls/item ({n}) | µs/item ({n})" for n in names) + " |",
        "|---|" + "---:|---:|" * len(names),
    ]
    order: list[str] = []
    for run in runs.values():
        order += [c for c in run["commands"] if c not in order]
    shown = [
        c
        for c in order
        if any(
            r["commands"].get(c, {}).get("calls_per_item", 0) >= MIN_CALLS for r in runs.values()
        )
    ]
    for command in shown:
        cells = []
        for run in runs.values():
            c = run["commands"].get(command)
            cells.append(f"{c['calls_per_item']:.3f} | {c['usec_per_item']:.2f}" if c else "– | –")
        lines.append(f"| `{command}` | " + " | ".join(cells) + " |")
    rest = [c for c in order if c not in shown]
    if rest:
        cells = []
        for run in runs.values():
            small = [run["commands"][c] for c in rest if c in run["commands"]]
            calls = sum(c["calls_per_item"] for c in small)
            cells.append(f"{calls:.3f} | {sum(c['usec_per_item'] for c in small):.2f}")
        label = f"{len(rest)} others (under {MIN_CALLS} calls/item each)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [f"**{r['calls_per_item']:.2f}** | –" for r in runs.values()]
    lines.append(
        "| **all commands** (script-internal ones included) | " + " | ".join(totals) + " |"
    )
    cpu = [f"– | **{r['cpu_us_per_item']:.1f}**" for r in runs.values()]
    lines.append("| **Redis CPU** (INFO cpu, user + sys) | " + " | ".join(cpu) + " |")
    wire = [
        f"{r['net_in_bytes_per_item']:,.0f} in / {r['net_out_bytes_per_item']:,.0f} out | –"
        for r in runs.values()
    ]
    lines.append("| **bytes on the wire** per item | " + " | ".join(wire) + " |")
    return lines


def memory_tables(mem: dict[str, Any]) -> list[str]:
    lines = [
        "| results | outputs (chars) | result JSON (B) | used_memory Δ per result (B) "
        "| results hash per result (B) | 1M results (MiB, extrapolated) | results hash encoding |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in mem["runs"]:
        lines.append(
            f"| {m['items']:,} | {m['output_chars']:,} | {m['result_json_mean_bytes']:,.0f} | "
            f"{m['used_memory_per_result']:,.0f} | {m['results_hash_bytes_per_result']:,.0f} | "
            f"{m['per_1m_results_mib_extrapolated']:,.0f} | {m['results_encoding']} |"
        )
    lines += [
        "",
        "| outputs (chars) | encoding | value (B) | scratch hash per result (B) |",
        "|---:|---|---:|---:|",
    ]
    for chars, variants in mem["reencoded"].items():
        for name, v in variants.items():
            lines.append(
                f"| {int(chars):,} | {name} | {v['value_mean_bytes']:,.0f} | "
                f"{v['hash_bytes_per_result']:,.0f} |"
            )
    if "small_jobs" in mem:
        lines += [
            "",
            "| jobs | items each | encoding thresholds | results hash | job record "
            "| used_memory Δ per result (B) |",
            "|---:|---:|---|---|---|---:|",
        ]
        sj = mem["small_jobs"]
        rows = [
            ("default " + ", ".join(f"{k}={v}" for k, v in sj["defaults"].items()), sj["default"]),
            ("hash-max-listpack-value=4096", sj["listpack"]),
            ("default", mem["single_item_jobs"]),
        ]
        for label, m in rows:
            lines.append(
                f"| {m['jobs']:,} | {m['items_per_job']:,} | {label} | {m['results_encoding']} | "
                f"{m['job_record_encoding']} | {m['used_memory_per_result']:,.0f} |"
            )
    typical = mem["runs"][0]
    per = typical["used_memory_per_result"]
    lines += [
        "",
        f"Stored results under a TTL (computed from the measured {per:,.0f} B per "
        "result of the first row; a job's results stay GENQ_RESULT_TTL_S after it ends):",
        "",
        "| sustained items/s | " + " | ".join(n for n, _ in TTLS) + " |",
        "|---:|" + "---:|" * len(TTLS),
    ]
    for rate in TTL_RATES:
        cells = [
            f"{rate * ttl / 1e6:,.1f} M results, {rate * ttl * per / 2**30:,.1f} GiB"
            for _, ttl in TTLS
        ]
        lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return lines


def idle_line(points: list[dict[str, Any]]) -> list[str]:
    idle = next(((p["workers"], p["idle"]) for p in points if p.get("idle")), None)
    if idle is None:
        return []
    n, cost = idle
    return [
        "",
        f"Idle: {n} workers with nothing to do cost Redis {cost['broker_calls_per_s']:.1f} "
        f"commands/s ({cost['broker_cpu_pct_of_core']:.2f} % of a core).",
    ]


def markdown(result: dict[str, Any]) -> str:
    out = [f"Machine: {result['machine']}. Command: `{result['command']}`.", ""]
    if result.get("curve"):
        out += ["### Scaling curve", "", *curve_table(result["curve"]), *idle_line(result["curve"])]
        out += [""]
    if result.get("saturation"):
        out += [
            "### Queue-bound (where one Redis saturates)",
            "",
            *curve_table(result["saturation"]),
            *idle_line(result["saturation"]),
            "",
        ]
    if result.get("per_item"):
        out += ["### Per-item Redis cost", "", *command_table(result["per_item"]), ""]
    if result.get("memory"):
        out += ["### Memory", "", *memory_tables(result["memory"]), ""]
    return "\n".join(out) + "\n"
