"""The GRPO module on the tiny backbone: gradient sign, sample reuse, micro-batching, a reward that rises."""

import copy

import lightning as L
import pytest
import torch

from r1lab.data import R1DataModule
from r1lab.data.tinyworld import TinyWorld
from r1lab.generation import sequence_logprobs
from r1lab.modules import grpo as grpo_mod
from r1lab.modules.grpo import GRPO
from r1lab.rewards import RewardSet


def digit_share(prompt: str, completion: str, reference: dict) -> float:
    """An easy reward a random policy can climb: the share of digits in the completion."""
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


def _module(backbone, cls=GRPO, **kw):
    lr = kw.pop("lr", 3e-3)
    args = dict(
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        rewards=RewardSet(functions={"digits": digit_share}),
        group_size=4, max_new_tokens=12, beta=0.0, evaluation={"k": 0, "max_new_tokens": 8},
        log_completions_every=0,
    )
    module = cls(backbone, **(args | kw))
    return module


def _data(tokenizer, prompts_per_step=4):
    dm = R1DataModule(TinyWorld(sizes={"train": 64, "val": 4, "test": 4}), mode="rl", template="plain",
                      batch_size=prompts_per_step, eval_batch_size=4)
    dm.connect(tokenizer)
    return dm


def _fit(module, dm, steps, precision="32-true"):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, precision=precision)
    trainer.fit(module, datamodule=dm)
    return trainer


@pytest.fixture
def recorded(monkeypatch):
    """Record every rollout and every grpo_loss call of the module."""
    calls = {"rollouts": [], "losses": []}
    real_rollout, real_loss = GRPO.rollout, grpo_mod.grpo_loss

    def rollout(self, batch):
        roll = real_rollout(self, batch)
        calls["rollouts"].append(roll)
        return roll

    def loss(logp, old_logp, *args, **kwargs):
        calls["losses"].append((logp.detach().clone(), old_logp.clone(), kwargs["num_sequences"]))
        return real_loss(logp, old_logp, *args, **kwargs)

    monkeypatch.setattr(GRPO, "rollout", rollout)
    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)
    return calls


def test_a_step_makes_higher_advantage_completions_more_likely(tiny_backbone, tokenizer, recorded):
    torch.manual_seed(0)
    module = _module(tiny_backbone, lr=1e-3)
    _fit(module, _data(tokenizer), steps=1)
    roll = recorded["rollouts"][0]
    rewards, _ = module.score(roll)
    advantages = grpo_mod.group_advantages(rewards, module.G)
    with torch.no_grad():
        after = sequence_logprobs(module.policy, roll["prompt_ids"], roll["prompt_mask"], roll["completion_ids"],
                                  roll["completion_mask"]).sum(-1)
    delta = after - roll["old_logp"].sum(-1)  # change of each completion's log-likelihood
    assert advantages.abs().sum() > 0
    assert delta[advantages > 0].mean() > 0 > delta[advantages < 0].mean()
    assert torch.corrcoef(torch.stack([delta, advantages]))[0, 1] > 0.5


def test_sample_reuse_uses_the_stored_old_logprobs(tiny_backbone, tokenizer, recorded):
    module = _module(tiny_backbone, num_iterations=2, lr=1e-2)
    trainer = _fit(module, _data(tokenizer), steps=2)  # one rollout, mu = 2 optimizer steps
    assert trainer.global_step == 2 and len(recorded["rollouts"]) == 1
    (logp1, old1, _), (logp2, old2, _) = recorded["losses"]
    stored = recorded["rollouts"][0]["old_logp"]

    def rows(x):  # each pass visits the rollout in its own shuffled order
        return x[x.sum(-1).argsort()]

    assert torch.equal(rows(old1), rows(stored)) and torch.equal(rows(old2), rows(stored))
    on = old1 != 0  # completion tokens (log-probs are 0 off the mask)
    assert torch.allclose(logp1[on], old1[on], atol=1e-4)  # first pass: ratio = 1
    on = old2 != 0
    assert (logp2[on] - old2[on]).abs().max() > 1e-3  # second pass: the policy moved, ratio != 1


def test_a_bf16_autocast_step_keeps_fp32_logprobs_and_weights_and_learns(tiny_backbone, tokenizer, recorded):
    """trainer.precision=bf16-mixed (the smol pipeline's GRPO stage): rollout and training pass under CPU
    autocast, the loss's log-probs and the weights in fp32, the ratio starting at 1 within bf16 rounding."""
    torch.manual_seed(0)
    module = _module(tiny_backbone, lr=1e-3)
    _fit(module, _data(tokenizer), steps=1, precision="bf16-mixed")
    (logp, old, _), roll = recorded["losses"][0], recorded["rollouts"][0]
    assert logp.dtype == old.dtype == torch.float32
    on = roll["completion_mask"].bool()
    assert (logp[on] - old[on]).abs().max() < 0.05  # same precision in sampling and training: ratio ~ 1
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.policy.parameters())
    rewards, _ = module.score(roll)
    advantages = grpo_mod.group_advantages(rewards, module.G)
    with torch.no_grad():
        after = sequence_logprobs(module.policy, roll["prompt_ids"], roll["prompt_mask"], roll["completion_ids"],
                                  roll["completion_mask"]).sum(-1)
    delta = after - roll["old_logp"].sum(-1)
    assert torch.corrcoef(torch.stack([delta, advantages]))[0, 1] > 0.5  # the update follows the advantages


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_sum_norm"])
def test_update_does_not_depend_on_micro_batching(tiny_backbone, tokenizer, aggregation):
    weights = []
    for micro in (None, 4):  # 16 sequences in 1 or 4 micro-batches
        torch.manual_seed(0)
        module = _module(tiny_backbone, micro_batch_size=micro, aggregation=aggregation,
                         optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
        _fit(module, _data(tokenizer), steps=1)
        weights.append(copy.deepcopy(module.policy.state_dict()))
    moved = 0
    for name, w in weights[0].items():
        assert torch.allclose(w, weights[1][name], atol=1e-5), name
        moved += int(not torch.equal(w, tiny_backbone.build_model().state_dict()[name]))
    assert moved > 0


def test_reference_model_only_with_kl_and_reset_on_schedule(tiny_backbone, tokenizer):
    no_kl = _module(tiny_backbone, beta=0.0)
    no_kl.configure_model()
    assert no_kl.reference is None
    module = _module(tiny_backbone, beta=0.1, ref_reset_every=2, lr=1e-2)
    _fit(module, _data(tokenizer), steps=3)
    assert all(not p.requires_grad for p in module.reference.parameters())
    # reset after rollout 2, then one more update: the reference equals the policy of step 2, not step 3
    ref, pol = module.reference.state_dict(), module.policy.state_dict()
    init = tiny_backbone.build_model().state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ref[name], init[name]) and not torch.equal(ref[name], pol[name])


@pytest.mark.slow
def test_a_short_run_raises_the_mean_reward(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    module = _module(tiny_backbone, lr=3e-3, group_size=8)
    rewards = []
    real = GRPO.score

    def score(self, roll):
        total, per = real(self, roll)
        rewards.append(total.mean().item())
        return total, per

    GRPO.score = score
    try:
        _fit(module, _data(tokenizer, prompts_per_step=4), steps=25)
    finally:
        GRPO.score = real
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, (first, last)


@pytest.mark.ddp
def test_grpo_under_ddp_with_two_cpu_processes(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    args = ["stage=grpo", "backbone=tiny", "backbone.name_or_path=null", "debug=fast", "trainer=ddp_sim",
            "callbacks.progress_bar=null",
            "data.source.sizes={train:64,val:8,test:8}", "module.group_size=2", "module.max_new_tokens=8",
            f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run([sys.executable, "-m", "r1lab.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"train/reward", "train/kl", "test/accuracy"} <= set(metrics)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["grpo_rollouts_done"] == 4


@pytest.mark.parametrize(("override", "message"), [
    ({"temperature": 0.0}, "module.temperature: must be > 0"),
    ({"top_p": 1.5}, r"module.top_p: must lie in \(0, 1\]"),
    ({"kl_estimator": "k4", "beta": 0.0}, "module.kl_estimator: 'k4' is not one of k1, k2, k3"),
    ({"aggregation": "mean"}, "module.aggregation: 'mean' is not one of"),
    ({"advantage_scale": "rank"}, "module.advantage_scale: 'rank' is not one of group, batch, none"),
    ({"beta": -1.0}, r"module.beta: must be a number in \[0.0, inf\]"),
    ({"clip_low": 1.5}, r"module.clip_low: must be a number in \[0.0, 1.0\]"),
    ({"group_size": 1}, r"module.group_size: must be an integer in \[2, inf\]"),
    ({"micro_batch_size": 0}, "module.micro_batch_size"),
    ({"max_grad_norm": 0.0}, r"module.max_grad_norm: must be a number in \(0.0, inf\]"),
])
def test_bad_settings_fail_when_the_module_is_built_naming_the_key(tiny_backbone, override, message):
    with pytest.raises(ValueError, match=message):
        _module(tiny_backbone, **override)
