"""The ``hf`` engine: torch + transformers ``generate`` on static, left-padded batches; and what
every engine on a Hugging Face model shares (``ct2`` uses them too): where its files are
(:func:`resolve_model_path`), its context length (:func:`context_length`), and text in and out
through its tokenizer (:class:`TokenizerText`)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from genq.errors import ModelLoadError, WorkerConfigError
from genq.schema import ChatMessage, FinishReason
from genq.settings import Settings
from genq.worker.engines.base import Generation, Prepared, check_stop
from genq.worker.engines.chat import render_with_tokenizer

if TYPE_CHECKING:
    from genq.worker.engines.hf_continuous import ContinuousDecoder

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def resolve_model_path(model: str) -> str:
    """A local directory for ``model`` (a directory, or a hub id found in the cache or online).

    Without network a hub id fails at once with a message that says what to do, rather than
    hanging in the hub client's retries.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model directory {path} has no config.json; point GENQ_MODEL at a directory "
                "saved with save_pretrained() (config.json, weights and tokenizer files)"
            )
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"model directory {model!r} does not exist; check GENQ_MODEL")
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(model, local_files_only=True, allow_patterns=_WEIGHT_PATTERNS))
    except Exception:
        log.debug("model %s is not in the local Hugging Face cache", model)
    hint = (
        f"model {model!r} is not a local directory and is not in the Hugging Face cache, and "
        "{why}. Set GENQ_MODEL to a local directory holding a saved model and tokenizer "
        "(for a random-weight GPT-2 to try genq with: `genq random-model ./models/gpt2-random`)."
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise ModelLoadError(hint.format(why="HF_HUB_OFFLINE is set"))
    if not _hub_reachable():
        raise ModelLoadError(hint.format(why="the Hugging Face hub cannot be reached"))
    try:
        return str(snapshot_download(model, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as e:
        raise ModelLoadError(hint.format(why=f"downloading it failed ({type(e).__name__})")) from e


def _hub_reachable() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise WorkerConfigError(f"GENQ_DEVICE={device} but no CUDA device is available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise WorkerConfigError(
                f"GENQ_DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


def context_length(config: Any) -> int | None:
    """Positions a model's config says it has (prompt + new tokens), None when it says none."""
    # Architectures name the field differently (GPT-2: n_positions; most others:
    # max_position_embeddings), and a config holds only its own fields.
    positions = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    return int(positions) if positions else None


class RowStopper(StoppingCriteria):  # type: ignore[misc]
    """Stops each row on its own: at its ``max_new_tokens``, at EOS, or at a stop string.

    Records why and after how many new tokens each row finished, so that the tokens generated
    after that (padding while the rest of the batch runs on) are never decoded.
    """

    def __init__(
        self,
        prompt_len: int,
        limits: Sequence[int],
        stops: Sequence[Sequence[str]],
        tokenizer: PreTrainedTokenizerBase,
        eos_id: int | None,
    ) -> None:
        self.prompt_len = prompt_len
        self.limits = list(limits)
        self.stops = [tuple(s) for s in stops]
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.finished: dict[int, tuple[FinishReason, int]] = {}
        # Each row's new tokens, extended by the columns added since the last call: copying
        # the whole generated block every step would cost O(steps^2) per row.
        self.generated: list[list[int]] = [[] for _ in self.limits]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        seen = len(self.generated[0]) if self.generated else 0
        fresh: list[list[int]] = input_ids[:, self.prompt_len + seen :].tolist()
        step = input_ids.shape[1] - self.prompt_len
        for row, limit in enumerate(self.limits):
            generated = self.generated[row]
            generated += fresh[row]
            if row in self.finished:
                continue
            reason = check_stop(
                generated,
                eos_id=self.eos_id,
                stops=self.stops[row],
                max_new_tokens=limit,
                decode=self._decode,
            )
            if reason is not None:
                self.finished[row] = (reason, step)
        done = [row in self.finished for row in range(len(self.limits))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )  # type: ignore[assignment]
        return text


class TokenizerText:
    """Text into token ids and chat into a prompt, through a Hugging Face tokenizer: the part
    of the engine interface the ``hf`` and ``ct2`` engines share."""

    tokenizer: PreTrainedTokenizerBase
    model_name: str

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def render_chat(self, messages: Sequence[ChatMessage], template: str | None = None) -> str:
        """``messages`` rendered with ``template`` or the tokenizer's chat template (see
        :func:`~genq.worker.engines.chat.render_with_tokenizer`)."""
        return render_with_tokenizer(self.tokenizer, self.model_name, messages, template)


class HFEngine(TokenizerText):
    """GPT-2 (or any causal LM) through ``model.generate`` on left-padded static batches."""

    name = "hf"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        model_name: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.torch_device = device
        self.device = str(device)
        self.model_name = model_name
        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.pad_id: int = pad if pad is not None else 0
        self.max_context: int | None = context_length(model.config)

    @classmethod
    def load(cls, settings: Settings) -> HFEngine:
        """Load GENQ_MODEL's tokenizer and model once, onto GENQ_DEVICE; half precision on
        CUDA."""
        model = settings.model
        path = resolve_model_path(model)
        torch_device = resolve_device(settings.device)
        dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        except Exception as e:
            raise ModelLoadError(
                f"could not load the model in {path} ({type(e).__name__}: {e}); it must hold a "
                "causal language model and its tokenizer saved with save_pretrained()"
            ) from e
        lm.to(torch_device)  # type: ignore[arg-type]
        lm.eval()  # type: ignore[no-untyped-call]
        return cls(lm, tokenizer, torch_device, model)

    def decoder(self) -> ContinuousDecoder:
        """A continuous batch over this model (rows join and leave between steps)."""
        from genq.worker.engines.hf_continuous import ContinuousDecoder

        return ContinuousDecoder(self)

    def warmup(self) -> None:
        from genq.schema import GenerationParams, WorkItem

        params = GenerationParams(max_new_tokens=2, do_sample=False)
        item = WorkItem(index=0, custom_id="warmup", prompt="Hello", params=params)
        ids = self.encode(item.prompt) or [self.pad_id]
        self.generate([Prepared("warmup", 0.0, item, ids, 2)])
        decoder = self.decoder()
        decoder.add([Prepared("warmup", 0.0, item, ids, 2)])
        while decoder.active_rows:
            decoder.step()

    def release_memory(self) -> None:
        """Return cached device memory after an out-of-memory error, before a smaller retry."""
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def generate(self, batch: Sequence[Prepared]) -> list[Generation]:
        first = batch[0].params
        n = first.num_return_sequences
        width = max(len(p.prompt_ids) for p in batch)
        input_ids = [[self.pad_id] * (width - len(p.prompt_ids)) + p.prompt_ids for p in batch]
        mask = [[0] * (width - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in batch]
        limits = [p.max_new_tokens for p in batch for _ in range(n)]
        stops = [p.params.stop for p in batch for _ in range(n)]
        stopper = RowStopper(width, limits, stops, self.tokenizer, self.eos_id)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max(limits),
            do_sample=first.do_sample,
            num_return_sequences=n,
            repetition_penalty=first.repetition_penalty,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            **(
                {"temperature": first.temperature, "top_k": first.top_k, "top_p": first.top_p}
                if first.do_sample
                else {}
            ),
        )
        if first.do_sample and first.seed is not None:
            torch.manual_seed(first.seed)
        with torch.inference_mode():
            out = self.model.generate(  # type: ignore[operator]
                input_ids=torch.tensor(input_ids, device=self.torch_device),
                attention_mask=torch.tensor(mask, device=self.torch_device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        generated: list[list[int]] = out[:, width:].tolist()
        rows: list[tuple[str, FinishReason, int]] = []
        for row, ids in enumerate(generated):
            reason, count = stopper.finished.get(row, ("length", min(limits[row], len(ids))))
            text: str = self.tokenizer.decode(
                ids[:count], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )  # type: ignore[assignment]
            rows.append((text, reason, count))
        return [
            Generation.of(rows[i * n : (i + 1) * n], prepared.params.stop)
            for i, prepared in enumerate(batch)
        ]
