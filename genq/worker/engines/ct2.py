"""The ``ct2`` engine: CTranslate2, converted once from the same Hugging Face checkpoint.

The conversion is cached under ``GENQ_CACHE_DIR`` (keyed by the checkpoint's files and the
CTranslate2 version), so only a worker's first start pays for it. Quantisation happens at load
time (``GENQ_CT2_COMPUTE_TYPE``): int8 on CPU and int8_float16 on CUDA by default. int8 changes
outputs slightly against the float model; use ``float32`` (CPU) or ``float16`` (CUDA) where
outputs must match the ``hf`` engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from genq.errors import ModelLoadError, WorkerConfigError
from genq.schema import FinishReason
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared, check_stop
from genq.worker.engines.hf import TokenizerText, context_length, resolve_model_path

log = logging.getLogger(__name__)


def conversion_key(model_dir: Path) -> str:
    """Identity of a checkpoint's files plus the CTranslate2 version."""
    digest = hashlib.sha256(ctranslate2.__version__.encode())
    for path in sorted(model_dir.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def convert_cached(model_dir: Path, cache_dir: Path) -> Path:
    """The CTranslate2 conversion of ``model_dir``, converting only on a cache miss."""
    target = cache_dir / "ct2" / conversion_key(model_dir)
    if (target / "model.bin").is_file():
        log.info("using cached CTranslate2 conversion %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("converting %s to CTranslate2 (once; cached in %s)", model_dir, target)
    # Convert beside the target, then rename: workers starting together never see half a model.
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        TransformersConverter(str(model_dir)).convert(str(scratch / "model"), force=True)
        try:
            os.replace(scratch / "model", target)
        except OSError:
            if not (target / "model.bin").is_file():  # not another worker winning the race
                raise
    except Exception as e:
        raise ModelLoadError(
            f"could not convert {model_dir} to CTranslate2 ({type(e).__name__}: {e}); "
            "GENQ_ENGINE=ct2 supports the architectures CTranslate2 converts (GPT-2 included)"
        ) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_ct2_device(device: str) -> tuple[str, int]:
    if device == "auto":
        return ("cuda", 0) if ctranslate2.get_cuda_device_count() > 0 else ("cpu", 0)
    kind, _, index = device.partition(":")
    if kind == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise WorkerConfigError(f"GENQ_DEVICE={device} but CTranslate2 sees no CUDA device")
    return kind, int(index or 0)


class CT2Engine(TokenizerText):
    """Batched generation with ``ctranslate2.Generator``; rows stop through its callback."""

    name = "ct2"

    def __init__(
        self,
        generator: Any,
        tokenizer: PreTrainedTokenizerBase,
        device: str,
        model_name: str,
        max_context: int | None,
    ) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.device = device
        self.model_name = model_name
        self.max_context = max_context
        self.eos_id: int | None = tokenizer.eos_token_id

    @classmethod
    def load(cls, settings: Settings) -> CT2Engine:
        """Convert GENQ_MODEL once (cached), then load it onto GENQ_DEVICE, quantised as
        GENQ_CT2_COMPUTE_TYPE says."""
        path = Path(resolve_model_path(settings.model))
        device, index = resolve_ct2_device(settings.device)
        compute_type = settings.ct2_compute_type
        if compute_type == "auto":
            compute_type = "int8" if device == "cpu" else "int8_float16"
        converted = convert_cached(path, Path(settings.cache_dir).expanduser())
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            config = AutoConfig.from_pretrained(str(path))
            generator = ctranslate2.Generator(
                str(converted), device=device, device_index=index, compute_type=compute_type
            )
        except Exception as e:
            raise ModelLoadError(f"could not load CTranslate2 model {converted}: {e}") from e
        label = f"{device}:{index}" if device == "cuda" else device
        return cls(
            generator,
            tokenizer,
            f"{label} ({compute_type})",
            settings.model,
            context_length(config),
        )

    def warmup(self) -> None:
        self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(self.encode("Hello"))],
            max_length=2,
            include_prompt_in_result=False,
        )

    def decoder(self) -> None:
        return None  # CTranslate2 runs whole batches: static batching only

    def release_memory(self) -> None:
        return None  # CTranslate2 gives its cached memory back itself

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        n = batch[0].params.num_return_sequences
        rows = [p for p in batch for _ in range(n)]
        # CTranslate2 4.x mis-decodes a batch that mixes one-token prompts with longer ones (it
        # reports the longer prompts' own tokens as generated), so one-token prompts run apart.
        single = [i for i, p in enumerate(rows) if len(p.prompt_ids) == 1]
        longer = [i for i, p in enumerate(rows) if len(p.prompt_ids) > 1]
        decoded: dict[int, tuple[list[int], FinishReason]] = {}
        for part in (single, longer):
            if part:
                out = self._generate_rows([rows[i] for i in part])
                decoded.update(zip(part, out, strict=True))
        texts = [
            (self._decode(decoded[row][0]), decoded[row][1], len(decoded[row][0]))
            for row in range(len(rows))
        ]
        return [
            Generation.of(texts[i * n : (i + 1) * n], prepared.params.stop)
            for i, prepared in enumerate(batch)
        ]

    def _generate_rows(self, rows: list[Prepared]) -> list[tuple[list[int], FinishReason]]:
        first = rows[0].params
        limits = [p.max_new_tokens for p in rows]
        stops = [p.params.stop for p in rows]
        generated: list[list[int]] = [[] for _ in rows]
        finished: dict[int, FinishReason] = {}
        # The callback must not reach the engine (no `self`): CTranslate2 drops it on its own
        # thread, and if that drops the last reference to the Generator, the Generator's thread
        # pool joins itself and aborts the process.
        eos_id, decode = self.eos_id, partial(decode_text, self.tokenizer)

        def on_token(step: Any) -> bool:
            row = step.batch_id
            if row in finished:
                return True
            generated[row].append(step.token_id)
            reason = check_stop(
                generated[row],
                eos_id=eos_id,
                stops=stops[row],
                max_new_tokens=limits[row],
                decode=decode,
            )
            if reason is not None:
                finished[row] = reason
            return reason is not None

        if first.do_sample and first.seed is not None:
            ctranslate2.set_random_seed(first.seed)
        self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(p.prompt_ids) for p in rows],
            max_length=max(limits),
            sampling_topk=(first.top_k or 0) if first.do_sample else 1,
            sampling_topp=first.top_p if first.do_sample else 1.0,
            sampling_temperature=first.temperature if first.do_sample else 1.0,
            repetition_penalty=first.repetition_penalty,
            include_prompt_in_result=False,
            return_end_token=True,
            callback=on_token,
        )
        return [(generated[i], finished.get(i, "length")) for i in range(len(rows))]

    def _decode(self, ids: list[int]) -> str:
        return decode_text(self.tokenizer, ids)


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """``ids`` as text, special tokens left out and spacing as generated."""
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text)
