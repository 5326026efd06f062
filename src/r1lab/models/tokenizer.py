"""The tiny tokenizer, built locally with the ``tokenizers`` library, and a loader that round-trips it.

Byte-level BPE trained on a fixed, generated corpus (the tiny world's tasks in both languages and the
templates), with every digit its own token (as Llama does, so arithmetic stays learnable) and the R1
tags as single tokens. The corpus and the trainer are deterministic, so the same vocabulary comes out
on every machine; each stage also saves the tokenizer next to its exported weights, and later stages
load that copy.

Loading: transformers 5 lets ``AutoTokenizer`` pick the model family's own tokenizer class from
``config.json``, which for a Llama-shaped folder can rebuild the tokenizer and drop spaces. We save
``tokenizer_class: PreTrainedTokenizerFast`` and load that class straight from ``tokenizer.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<|bos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# A minimal chat format: <|role|>content\n ... and the assistant's turn ends with EOS.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + EOS + "{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _training_corpus(n: int = 800, seed: int = 0) -> list[str]:
    from r1lab.data.templates import R1_SYSTEM_PROMPT, R1_ZERO_TEMPLATE
    from r1lab.data.tinyworld.arithmetic import generate_arithmetic_task

    rng = random.Random(seed)
    texts = [R1_ZERO_TEMPLATE, R1_SYSTEM_PROMPT, "The answer is 答案是"]
    try:
        from r1lab.data.tinyworld.code_tasks import generate_code_task
    except ImportError:  # the code family is optional for the vocabulary
        generate_code_task = None
    for i in range(n):
        language = "zh" if i % 3 == 0 else "en"
        if generate_code_task is not None and i % 5 == 0:
            task = generate_code_task(rng, 1 + i % 3, language)
        else:
            task = generate_arithmetic_task(rng, 1 + i % 4, 99, language)
        texts.append(f"{task['prompt']} {task['response']}")
    return texts


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE tokenizer (deterministic) and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    special = [EOS, PAD, BOS, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special + TAG_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=BOS, clean_up_tokenization_spaces=False
    )
    wrapped.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(tokenizer, path: str | Path) -> None:
    """``save_pretrained`` plus the class pin that makes ``AutoTokenizer`` load it unchanged."""
    tokenizer.save_pretrained(str(path))
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        cfg_path = Path(path) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def load_tokenizer(name_or_path: str, **kwargs):
    """Load a tokenizer; a folder pinned to ``PreTrainedTokenizerFast`` is loaded as exactly that."""
    cfg_path = Path(name_or_path) / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            return PreTrainedTokenizerFast.from_pretrained(name_or_path, **kwargs)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
