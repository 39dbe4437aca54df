"""Throughput benchmark: genq against the ways a user would otherwise generate in bulk.

    python -m bench --tokenizer ../shared/gpt2-tokenizer            # GPT-2 124M, random weights
    python -m bench --model DIR --device cuda --batch-size 64 --workload uniform

Prints a table (tokens/s, prompts/s, ratio to raw batched generate, peak memory), and writes
results.json and throughput.png under --out.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from bench.e2e import Measurement, run_genq
from bench.workloads import WORKLOADS
from genq.producer.embedded import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "gpt2-tokenizer"
BASELINES = ("seed", "pipeline", "raw")
DEFAULT_PROMPTS = {"uniform": 64, "mixed": 128}


def ensure_model(model: str | None, tokenizer: str | None, out: Path) -> str:
    if model:
        return model
    from genq.devtools.random_model import PRESETS, build_random_gpt2

    tok = tokenizer or (str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_dir() else None)
    target = out / "models" / ("gpt2-124m" if tok else "gpt2-124m-trained-tokenizer")
    if not (target / "config.json").is_file():
        click.echo(f"building GPT-2 124M with random weights in {target}", err=True)
        build_random_gpt2(target, PRESETS["gpt2"], tokenizer_dir=tok)
    return str(target)


def run_baseline(
    name: str, model: str, workload: str, n: int, batch_size: int, device: str
) -> Measurement:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.baselines",
            name,
            model,
            workload,
            str(n),
            str(batch_size),
            device,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise click.ClickException(f"baseline {name} failed:\n{out.stderr[-3000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Measurement(data["tokens"], data["prompts"], data["seconds"], data["peak_rss_mb"])


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in rows if r["tokens_per_s"]})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        data = [r for r in rows if r["workload"] == workload and r["tokens_per_s"]]
        ax.barh([r["engine"] for r in data], [r["tokens_per_s"] for r in data], color="#4c72b0")
        for i, r in enumerate(data):
            ax.text(r["tokens_per_s"], i, f" {r['tokens_per_s']:.0f}", va="center")
        ax.set_title(f"{workload} workload")
        ax.set_xlabel("generated tokens / s")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table_rows(workload: str, results: dict[str, Measurement]) -> list[dict[str, Any]]:
    raw = results.get("raw")
    raw_rate = raw.tokens / raw.seconds if raw else None
    rows = []
    for name, m in results.items():
        rate = m.tokens / m.seconds
        rows.append(
            {
                "workload": workload,
                "engine": name,
                "tokens": m.tokens,
                "prompts": m.prompts,
                "seconds": round(m.seconds, 3),
                "tokens_per_s": round(rate, 1),
                "prompts_per_s": round(m.prompts / m.seconds, 2),
                "ratio_to_raw": round(rate / raw_rate, 2) if raw_rate else None,
                "peak_rss_mb": round(m.peak_rss_mb),
            }
        )
    return rows


@click.command()
@click.option("--model", help="Model directory (default: GPT-2 124M, random weights).")
@click.option("--tokenizer", help="Tokenizer directory for the random-weight GPT-2.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--workload", type=click.Choice(["uniform", "mixed", "all"]), default="all", show_default=True
)
@click.option(
    "--engines",
    default="seed,pipeline,raw,genq-hf,genq-ct2",
    show_default=True,
    help="Comma-separated: seed, pipeline, raw, genq-hf, genq-ct2, genq-null.",
)
@click.option("--prompts", type=int, help="Prompts per workload [uniform 64, mixed 128].")
@click.option(
    "--seed-prompts",
    type=int,
    default=16,
    show_default=True,
    help="Prompts for the slow one-at-a-time baseline.",
)
@click.option(
    "--queue-prompts",
    type=int,
    default=20_000,
    show_default=True,
    help="Job size for the queue path alone (null engine); 0 skips it.",
)
@click.option("--ct2-compute-type", default="auto", show_default=True)
@click.option("--redis-url", help="Use this Redis (default: an embedded valkey-server).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=str(ROOT / "bench" / "out"),
    show_default=True,
)
def main(
    model: str | None,
    tokenizer: str | None,
    device: str,
    batch_size: int,
    workload: str,
    engines: str,
    prompts: int | None,
    seed_prompts: int,
    queue_prompts: int,
    ct2_compute_type: str,
    redis_url: str | None,
    out: str,
) -> None:
    """Measure genq against the seed's way, HF pipeline and raw batched generate."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(model, tokenizer, out_dir)
    names = [e.strip() for e in engines.split(",") if e.strip()]
    workloads = list(WORKLOADS) if workload == "all" else [workload]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(
            embedded_redis(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "data")
        )
        extra = {
            "GENQ_CT2_COMPUTE_TYPE": ct2_compute_type,
            "GENQ_CACHE_DIR": str(out_dir / "cache"),
        }
        for wl in workloads:
            n = prompts or DEFAULT_PROMPTS[wl]
            results: dict[str, Measurement] = {}
            for name in names:
                click.echo(f"[{wl}] {name} ...", err=True)
                if name in BASELINES:
                    count = min(n, seed_prompts) if name == "seed" else n
                    results[name] = run_baseline(name, model_dir, wl, count, batch_size, device)
                else:
                    engine = name.removeprefix("genq-")
                    results[name] = run_genq(
                        url,
                        model_dir,
                        engine,
                        WORKLOADS[wl](n),
                        batch_size,
                        device,
                        out_dir,
                        extra_env=extra,
                    )
            rows += table_rows(wl, results)
        if queue_prompts:
            click.echo(f"[queue] genq-null, {queue_prompts} prompts ...", err=True)
            work = WORKLOADS["uniform"](queue_prompts)
            m = run_genq(url, model_dir, "null", work, 256, "cpu", out_dir, chunk_size=64)
            rows += table_rows(f"queue ({queue_prompts} prompts)", {"genq-null": m})

    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "model": model_dir,
                "device": device,
                "batch_size": batch_size,
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
    )
    chart(rows, out_dir / "throughput.png")
    header = (
        "| workload | engine | tokens/s | prompts/s | ratio to raw | peak RSS (MB) | tokens | s |"
    )
    click.echo(header)
    click.echo("|" + "---|" * 8)
    for r in rows:
        ratio = f"{r['ratio_to_raw']:.2f}" if r["ratio_to_raw"] is not None else "-"
        click.echo(
            f"| {r['workload']} | {r['engine']} | {r['tokens_per_s']:,.1f} | "
            f"{r['prompts_per_s']:,} | {ratio} | {r['peak_rss_mb']:,} | {r['tokens']:,} | "
            f"{r['seconds']} |"
        )
    click.echo(
        f"results: {out_dir / 'results.json'}; chart: {out_dir / 'throughput.png'}", err=True
    )


if __name__ == "__main__":
    main()
