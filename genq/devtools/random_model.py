"""Build a GPT-2 with random weights, saved with a tokenizer, where no weights can be downloaded.

Random weights cost the same compute as trained ones, so such a model serves benchmarks, tests
and trying genq out; its text is gibberish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int  # of a tokenizer trained on the fly (a given tokenizer sets its own)


PRESETS = {
    "tiny": Preset(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=600),
    "small": Preset(n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=2000),
    "gpt2": Preset(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
}

CORPUS = [
    "Write a product description for a stainless steel water bottle that keeps drinks cold.",
    "Summarise the quarterly report: revenue grew 12% while costs fell in every region.",
    "The quick brown fox jumps over the lazy dog. Marketing copy should be short and clear.",
    "Our new running shoes combine a light mesh upper with a cushioned, responsive sole.",
    "Dear customer, thank you for your order! It will ship within two business days.",
    "Headline: Ten ways to make your morning coffee taste better, from beans to brewing.",
    "\"Quotes\", 'apostrophes', back\\slashes, tabs\tand newlines\nbelong in prompts too.",
    "人工智能生成内容正在改变营销文案、产品描述和报告摘要的写作方式。",
    "大型语言模型通过对海量文本数据进行训练，掌握语言的语义和语法规则。",
    "Emoji in copy: 🚀 launch day, 🎉 celebrate, ☕ coffee, 🌍 worldwide shipping.",
    "Numbers and prices: $19.99, 50% off, 3 for 2, order #12345 arrives 2026-12-01.",
    "Le café est prêt. Die Straße ist lang. El niño juega en el jardín. Ça va très bien.",
]


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on a small built-in corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((corpus or CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    )


def build_random_gpt2(
    directory: Path, preset: Preset, tokenizer_dir: str | Path | None = None, seed: int = 0
) -> Path:
    """Save a random-weight GPT-2 of ``preset``'s shape and its tokenizer to ``directory``."""
    torch.manual_seed(seed)
    tokenizer = (
        AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if tokenizer_dir is not None
        else train_tokenizer(preset.vocab_size)
    )
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=preset.n_positions,
        n_embd=preset.n_embd,
        n_layer=preset.n_layer,
        n_head=preset.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    model = GPT2LMHeadModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
