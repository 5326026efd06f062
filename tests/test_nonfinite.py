"""No NaN reaches the weights or an export: a non-finite loss stops the run naming the step, or the step
is skipped and counted; a NaN reward is refused naming the reward; exports refuse NaN weights."""

import json
import math

import lightning as L
import pytest
import torch

from r1lab.data import R1DataModule
from r1lab.data.tinyworld import TinyWorld
from r1lab.modules import grpo as grpo_mod
from r1lab.modules.base import export_hf
from r1lab.modules.grpo import GRPO
from r1lab.modules.guards import NonFiniteError
from r1lab.rewards import RewardSet
from r1lab.train import ConfigError, run


def digits(prompt, completion, reference):
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


def nan_reward(prompt, completion, reference):
    return float("nan")


def _grpo(backbone, **kw):
    return GRPO(backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                rewards=RewardSet({"digits": digits}), group_size=2, max_new_tokens=6, beta=0.0,
                evaluation={"k": 0, "max_new_tokens": 4}, log_completions_every=0, **kw)


def _fit(module, tokenizer, steps):
    data = R1DataModule(TinyWorld(sizes={"train": 32, "val": 4, "test": 4}), mode="rl", template="plain",
                        batch_size=4, eval_batch_size=4)
    data.connect(tokenizer)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.fixture
def nan_on_second_step(monkeypatch):
    """grpo_loss returns NaN on its second call (the second optimizer step)."""
    real, calls = grpo_mod.grpo_loss, []

    def loss(*args, **kwargs):
        value, metrics = real(*args, **kwargs)
        calls.append(1)
        return (value * float("nan"), metrics) if len(calls) == 2 else (value, metrics)

    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)


def test_a_nan_loss_stops_grpo_naming_the_step(tiny_backbone, tokenizer, nan_on_second_step):
    torch.manual_seed(0)
    module = _grpo(tiny_backbone)
    with pytest.raises(NonFiniteError, match=r"step 1: train/loss is nan \(module.nonfinite=skip skips"):
        _fit(module, tokenizer, steps=3)
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())


def test_a_skipped_step_leaves_the_weights_and_is_counted(tiny_backbone, tokenizer, nan_on_second_step,
                                                          monkeypatch):
    torch.manual_seed(0)
    module = _grpo(tiny_backbone, nonfinite="skip")
    snapshots = []
    real_update = GRPO.policy_update

    def update(self, roll, advantages):
        before = [p.detach().clone() for p in self.policy.parameters()]
        out = real_update(self, roll, advantages)
        snapshots.append(max((p - b).abs().max().item() for p, b in zip(self.policy.parameters(), before)))
        return out

    monkeypatch.setattr(GRPO, "policy_update", update)
    trainer = _fit(module, tokenizer, steps=3)
    assert trainer.global_step == 3 and module.skipped_steps == 1
    assert snapshots[0] > 0 and snapshots[1] == 0.0 and snapshots[2] > 0  # step 2 changed no weight
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())


def test_a_nan_reward_is_refused_naming_the_reward(tiny_backbone, tokenizer):
    module = GRPO(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                  rewards=RewardSet({"digits": digits, "broken": nan_reward}), group_size=2, max_new_tokens=4,
                  beta=0.0, evaluation={"k": 0, "max_new_tokens": 4}, log_completions_every=0)
    with pytest.raises(ValueError, match=r"module.rewards.functions.broken: returned nan for completion 0"):
        _fit(module, tokenizer, steps=1)


def test_sft_stops_on_a_nan_loss_and_exports_nothing(make_cfg, tmp_path, monkeypatch):
    from r1lab.modules import sft

    real, calls = sft.response_cross_entropy, []

    def loss(logits, labels):  # the third training step's loss is inf (validation runs without grad)
        value, n = real(logits, labels)
        if torch.is_grad_enabled():
            calls.append(1)
        return (value * math.inf if torch.is_grad_enabled() and len(calls) == 3 else value), n

    monkeypatch.setattr(sft, "response_cross_entropy", loss)
    with pytest.raises(NonFiniteError, match="step 2: train/loss is inf"):
        run(make_cfg("stage=sft", "debug=fast", "callbacks.progress_bar=null", "test=false"))
    assert not (tmp_path / "hf").exists() and not (tmp_path / "metrics.json").exists()
    calls.clear()
    metrics = run(make_cfg("stage=sft", "debug=fast", "callbacks.progress_bar=null", "test=false",
                           "module.nonfinite=skip"))
    assert metrics["train/skipped_steps"] == 1.0 and (tmp_path / "hf" / "config.json").is_file()
    with pytest.raises(ConfigError, match="module.nonfinite: 'ignore' is not one of stop, skip"):
        run(make_cfg("stage=sft", "debug=fast", "module.nonfinite=ignore"))


def test_an_export_refuses_nan_weights_and_keeps_the_previous_one(tiny_backbone, tmp_path):
    model = tiny_backbone.build_model()
    export_hf(model, tiny_backbone.tokenizer, tmp_path / "hf")
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="parameter model.embed_tokens.weight holds non-finite values"):
        export_hf(model, tiny_backbone.tokenizer, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no half-written folder beside it
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
