"""Baselines run in their own process (clean peak memory): the seed tutorial's one-at-a-time
``generate``, Hugging Face ``pipeline`` with ``batch_size``, and raw batched ``generate``.

    python -m bench.baselines seed|pipeline|raw MODEL_DIR WORKLOAD N BATCH_SIZE DEVICE
prints one JSON object: tokens, prompts, seconds, peak_rss_mb.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from bench.workloads import WORKLOADS, Workload


def useful_tokens(tokenizer: Any, ids: list[int], params: dict[str, Any], eos: int) -> int:
    """Generated tokens a row needed: up to its max_new_tokens, EOS, or its first stop string."""
    ids = ids[: params["max_new_tokens"]]
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    for k in range(1, len(ids) + 1) if params.get("stop") else ():
        if any(s in tokenizer.decode(ids[:k]) for s in params["stop"]):
            return k
    return len(ids)


def sampling(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in ("do_sample", "top_k", "top_p") if k in params}


def run_seed(model: Any, tok: Any, work: Workload, batch_size: int, device: str) -> int:
    """The seed tutorial's way: one prompt at a time through model.generate."""
    tokens = 0
    for item in work.items:
        params = work.item_params(item)
        ids = tok(item["prompt"], return_tensors="pt").input_ids.to(device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params["max_new_tokens"],
                pad_token_id=tok.eos_token_id,
                **sampling(params),
            )
        tokens += useful_tokens(tok, out[0, ids.shape[1] :].tolist(), params, tok.eos_token_id)
    return tokens


def run_pipeline(model: Any, tok: Any, work: Workload, batch_size: int, device: str) -> int:
    """HF pipeline(batch_size=N); one call per distinct max_new_tokens (its kwargs are per call)."""
    pipe = pipeline("text-generation", model=model, tokenizer=tok, device=device)
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item in work.items:
        groups[work.item_params(item)["max_new_tokens"]].append(item)
    tokens = 0
    for max_new, items in groups.items():
        outs = pipe(
            [i["prompt"] for i in items],
            batch_size=batch_size,
            max_new_tokens=max_new,
            return_full_text=False,
            pad_token_id=tok.eos_token_id,
            **sampling(work.params),
        )
        for item, out in zip(items, outs, strict=True):
            text = out[0]["generated_text"]
            ids = tok(text, add_special_tokens=False).input_ids
            tokens += useful_tokens(tok, ids, work.item_params(item), tok.eos_token_id)
    return tokens


def run_raw(model: Any, tok: Any, work: Workload, batch_size: int, device: str) -> int:
    """Raw batched generate in input order: left padding, one call per batch of batch_size."""
    tokens = 0
    for start in range(0, len(work.items), batch_size):
        items = work.items[start : start + batch_size]
        params = [work.item_params(i) for i in items]
        enc = tok([i["prompt"] for i in items], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max(p["max_new_tokens"] for p in params),
                pad_token_id=tok.eos_token_id,
                **sampling(work.params),
            )
        for row, p in enumerate(params):
            ids = out[row, enc.input_ids.shape[1] :].tolist()
            tokens += useful_tokens(tok, ids, p, tok.eos_token_id)
    return tokens


RUNNERS = {"seed": run_seed, "pipeline": run_pipeline, "raw": run_raw}


def main(argv: list[str]) -> None:
    name, model_dir, workload, n, batch_size, device = argv
    device = "cuda" if device == "auto" and torch.cuda.is_available() else device
    device = "cpu" if device == "auto" else device
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    work = WORKLOADS[workload](int(n))
    warm = Workload(
        "warmup",
        [{"prompt": i["prompt"]} for i in work.items[:2]],
        {**work.params, "max_new_tokens": 2},
    )
    RUNNERS[name](model, tok, warm, int(batch_size), device)
    started = time.perf_counter()
    tokens = RUNNERS[name](model, tok, work, int(batch_size), device)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"tokens": tokens, "prompts": len(work.items), "seconds": seconds, "peak_rss_mb": peak}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
