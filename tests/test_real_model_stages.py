"""The stages on a real pretrained model: SmolLM2-135M-Instruct (the `real` extra's GGUF, converted once
into the cache) through two SFT steps and two GRPO steps with the project's own configs; its export
generates in plain transformers what the policy generated; the fused training pass equals a plain
forward over full logits on a 49,152-token vocabulary."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow

REAL = ["experiment=smol", "data=smol", "callbacks.progress_bar=null", "data.source.sizes={train:32,val:4,test:4}",
        "data.val_limit=4", "data.test_limit=4", "module.evaluation.max_new_tokens=16", "trainer.val_check_interval=2",
        "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def smol_folder():
    pytest.importorskip("gguf")  # the `real` extra
    from r1lab.models.gguf import convert_gguf

    return str(convert_gguf("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def sft_export(smol_folder, tmp_path_factory):
    from conftest import compose_cfg
    from r1lab.train import run

    out = tmp_path_factory.mktemp("sft")
    torch.set_num_threads(1)
    metrics = run(compose_cfg(out, ["stage=sft", *REAL, f"backbone.name_or_path={smol_folder}", "backbone=hf",
                                    "backbone.dtype=float32", "data.batch_size=2", "module.optimizer.lr=5e-5"]))
    return out, metrics


def test_two_sft_steps_on_the_real_model_train_and_export(sft_export, smol_folder):
    out, metrics = sft_export
    assert 0 < metrics["train/loss"] < 10 and 0.0 <= metrics["test/accuracy"] <= 1.0
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["vocab_size"] == 49152 and config["architectures"] == ["LlamaForCausalLM"]
    from safetensors.torch import load_file

    before, after = load_file(f"{smol_folder}/model.safetensors"), load_file(out / "hf" / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(before[key], after[key]) and all(torch.isfinite(t).all() for t in after.values())


def test_the_export_generates_in_plain_transformers_what_the_policy_did(sft_export):
    from transformers import AutoModelForCausalLM

    from r1lab.data.collate import Tokenized, left_pad
    from r1lab.generation import SamplingParams, TorchEngine
    from r1lab.models import Backbone

    out, _ = sft_export
    backbone = Backbone(name_or_path=str(out / "hf"))
    policy = backbone.build_model().eval()
    tok = Tokenized(backbone.tokenizer, "chat", 128, 24, "")
    ids, mask = left_pad([tok.prompt_ids("What is 12 + 7 - 5?")], backbone.tokenizer.pad_token_id)
    ours = TorchEngine(policy, backbone.tokenizer).generate(ids, mask, SamplingParams(24, greedy=True))
    plain = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    with torch.no_grad():
        theirs = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                eos_token_id=backbone.tokenizer.eos_token_id,
                                pad_token_id=backbone.tokenizer.pad_token_id)
    n = int(ours.lengths[0])
    assert ours.decoder == "static_kv"
    assert theirs[0, ids.shape[1]: ids.shape[1] + n].tolist() == ours.completion_ids[0, :n].tolist()


def test_two_grpo_steps_on_the_real_model(sft_export, tmp_path):
    from conftest import compose_cfg
    from r1lab.train import run

    out, _ = sft_export
    metrics = run(compose_cfg(tmp_path, ["stage=grpo", *REAL, f"backbone.name_or_path={out / 'hf'}",
                                         "data.batch_size=2", "module.group_size=2", "module.max_new_tokens=16",
                                         "module.beta=0.04"]))
    for key in ("train/reward", "train/loss", "train/kl", "train/accuracy", "test/accuracy"):
        assert key in metrics and metrics[key] == metrics[key], key  # logged and not NaN
    assert metrics["train/completion_length"] <= 16 and (tmp_path / "hf" / "config.json").is_file()


def test_the_fused_training_pass_equals_a_plain_forward_on_the_real_model(smol_folder):
    from r1lab.data.collate import Tokenized, left_pad
    from r1lab.generation import sample, sequence_logprobs
    from r1lab.models import Backbone
    from r1lab.tensors import positions_from_mask, token_logprobs

    backbone = Backbone(name_or_path=smol_folder)
    model = backbone.build_model()
    tok = Tokenized(backbone.tokenizer, "chat", 64, 12, "")
    ids, mask = left_pad([tok.prompt_ids(p) for p in ["What is 3 + 4?", "What is 12 + 7 - 5?"]],
                         backbone.tokenizer.pad_token_id)
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    roll = sample(model.eval(), ids, mask, max_new_tokens=12, eos_id=-1, pad_id=backbone.tokenizer.pad_token_id,
                  generator=torch.Generator().manual_seed(0), temperature=0.9)
    model.train()
    weights = torch.randn(roll.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    params = [model.model.layers[0].self_attn.q_proj.weight, model.model.embed_tokens.weight]

    def grads(logp):
        model.zero_grad()
        (logp * weights).sum().backward()
        return logp.detach(), [p.grad.clone() for p in params]

    fused = grads(sequence_logprobs(model, ids, mask, roll.completion_ids, roll.completion_mask, 0.9))
    attention = torch.cat([mask, roll.completion_mask], 1)
    logits = model(input_ids=torch.cat([ids, roll.completion_ids], 1), attention_mask=attention,
                   position_ids=positions_from_mask(attention)).logits[:, ids.shape[1] - 1 : -1]
    plain = grads(token_logprobs(logits, roll.completion_ids, 0.9) * roll.completion_mask)
    assert torch.allclose(fused[0], plain[0], atol=2e-4)
    assert torch.allclose(fused[0], roll.logprobs, atol=2e-4)  # and the sampler's log-probs
    # fp32 sums over 49,152 logits in another order: measured relative error 3-5e-6 of each gradient's
    # norm; single elements of the tied embedding's gradient where terms cancel differ by up to 4e-4
    # against values of about 100
    for a, b in zip(fused[1], plain[1]):
        assert (a - b).norm() / b.norm() < 1e-4
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))
