"""PPO with a value model on the tiny backbone: separate gradients, warm-up, a reward that rises, a value
loss that falls, checkpoints that hold the critic, DDP; and GRPO's critic-free estimators."""

import copy

import lightning as L
import pytest
import torch

from r1lab.data import R1DataModule
from r1lab.data.tinyworld import TinyWorld
from r1lab.generation import sequence_logprobs
from r1lab.modules.grpo import GRPO
from r1lab.modules.ppo import PPO
from r1lab.rewards import RewardSet
from r1lab.rl import group_advantages, rloo_advantages
from test_grpo import _module, digit_share


def _ppo(backbone, cls=PPO, **kw):
    """test_grpo's module (the digit-share reward, tiny sampling), as PPO with a fast critic by default."""
    if cls is PPO:
        kw["critic"] = {"lr": 3e-3} | kw.pop("critic", {})
    return _module(backbone, cls=cls, **kw)


def _data(tokenizer, prompts_per_step=4):
    dm = R1DataModule(TinyWorld(sizes={"train": 64, "val": 4, "test": 4}), mode="rl", template="plain",
                      batch_size=prompts_per_step, eval_batch_size=4)
    dm.connect(tokenizer)
    return dm


class Record(L.Callback):
    def __init__(self, *keys):
        self.keys, self.values = keys, {k: [] for k in keys}

    def on_train_batch_end(self, trainer, *args):
        for k in self.keys:
            self.values[k].append(float(trainer.callback_metrics[k]))


def _fit(module, dm, steps, callbacks=(), **kw):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=list(callbacks), enable_checkpointing=kw.pop("enable_checkpointing", False), **kw)
    trainer.fit(module, datamodule=dm, ckpt_path=kw.get("ckpt_path"))
    return trainer


def test_the_value_loss_reaches_only_the_critic_and_the_policy_loss_only_the_policy(tiny_backbone, tokenizer):
    module = _ppo(tiny_backbone)
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, 400, (2, 6), generator=g)
    completion = torch.randint(5, 400, (2, 5), generator=g)
    pmask, cmask = torch.ones(2, 6, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    values = module.critic(prompt, pmask, completion, cmask)  # (2, 5)
    assert values.shape == (2, 5) and torch.count_nonzero(values) == 0  # the zero head: V = 0 at the start
    (values - 1.0).pow(2).mean().backward()
    assert all(p.grad is None for p in module.policy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.critic.parameters())
    module.critic.zero_grad(set_to_none=True)
    sequence_logprobs(module.policy, prompt, pmask, completion, cmask).sum().backward()
    assert all(p.grad is None for p in module.critic.parameters())
    # the critic starts as a copy of the policy's body, not a view of it
    body = dict(module.policy.model.named_parameters())
    for name, p in module.critic.model.base_model.named_parameters():
        assert torch.equal(p, body[name]) and p.data_ptr() != body[name].data_ptr()


def test_critic_warm_up_moves_the_critic_and_not_the_policy(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    module = _ppo(tiny_backbone, critic={"warmup_rollouts": 2})
    module.configure_model()
    policy0, critic0 = copy.deepcopy(module.policy.state_dict()), copy.deepcopy(module.critic.state_dict())
    record = Record("train/critic_warmup")
    _fit(module, _data(tokenizer), steps=2, callbacks=[record])
    assert record.values["train/critic_warmup"] == [1.0, 1.0]
    assert all(torch.equal(v, module.policy.state_dict()[k]) for k, v in policy0.items())
    assert any(not torch.equal(v, module.critic.state_dict()[k]) for k, v in critic0.items())
    _fit(module, _data(tokenizer), steps=3)
    assert any(not torch.equal(v, module.policy.state_dict()[k]) for k, v in policy0.items())


@pytest.mark.slow
def test_ppo_raises_the_mean_reward(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    module = _ppo(tiny_backbone, group_size=8)
    record = Record("train/reward")
    _fit(module, _data(tokenizer, prompts_per_step=4), steps=25, callbacks=[record])
    rewards = record.values["train/reward"]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1, rewards  # measured: 0.014 -> 0.16


@pytest.mark.slow
def test_the_value_loss_falls_as_the_critic_learns_the_returns(tiny_backbone, tokenizer):
    torch.manual_seed(0)

    def offset(prompt, completion, reference):  # returns near 1: a zero-head critic starts far off
        return 1.0 + digit_share(prompt, completion, reference)

    module = _ppo(tiny_backbone, group_size=8, rewards=RewardSet(functions={"digits": offset}))
    record = Record("train/value_loss")
    _fit(module, _data(tokenizer, prompts_per_step=4), steps=25, callbacks=[record])
    loss = record.values["train/value_loss"]
    assert sum(loss[-5:]) / 5 < 0.1 * sum(loss[:3]) / 3, loss  # measured: 0.24 -> 0.001


def test_checkpoints_hold_the_critic_and_its_optimiser_and_resume_continues(tiny_backbone, tokenizer, tmp_path):
    def run(steps, ckpt=None, seed=0):
        torch.manual_seed(seed)
        module = _ppo(tiny_backbone)
        callback = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            callbacks=[callback])
        trainer.fit(module, datamodule=_data(tokenizer), ckpt_path=ckpt)
        return module

    straight = run(4)
    (tmp_path / "last.ckpt").unlink()
    run(2)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    critic_keys = [k for k in ckpt["state_dict"] if k.startswith("critic.")]
    assert critic_keys and ckpt["grpo_rollouts_done"] == 2
    n_params = sum(1 for p in straight.parameters() if p.requires_grad)
    assert len(ckpt["optimizer_states"][0]["state"]) == n_params  # Adam moments of the policy and the critic
    assert ckpt["optimizer_states"][0]["param_groups"][1]["lr"] == pytest.approx(3e-3)
    resumed = run(4, ckpt=str(tmp_path / "last.ckpt"))
    for name, p in straight.state_dict().items():
        assert torch.allclose(p, resumed.state_dict()[name], atol=1e-6), name


def test_grpo_estimators_rloo_and_reinforce_pp_and_the_kl_in_the_reward(tiny_backbone, tokenizer):
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 2.0, 2.0, 2.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 0]] * 8, dtype=torch.float)
    logp = torch.full((8, 4), -1.0)
    roll = {"loss_mask": mask, "completion_mask": mask.long(), "old_logp": logp, "ref_logp": None}
    rloo = _ppo(tiny_backbone, cls=GRPO, estimator="rloo")
    assert torch.equal(rloo.compute_advantages(roll, rewards)[0], rloo_advantages(rewards, 4))
    group = _ppo(tiny_backbone, cls=GRPO)
    assert torch.equal(group.compute_advantages(roll, rewards)[0], group_advantages(rewards, 4))
    # REINFORCE++: per-token returns normalised over the whole batch; with no KL the return is the outcome
    rpp = _ppo(tiny_backbone, cls=GRPO, estimator="reinforce_pp")
    got = rpp.compute_advantages(roll, rewards)[0]
    tokens = rewards.repeat_interleave(3)  # the statistics are over the batch's 24 completion tokens
    want = (rewards - tokens.mean()) / tokens.std()
    assert torch.allclose(got[:, :3], want[:, None].expand(8, 3), atol=1e-4) and torch.equal(got[:, 3], torch.zeros(8))
    # KL in the reward: ref log-probs 0.5 below the policy's on every token, k1 = 0.5, β = 0.2
    # -> each completion's reward falls by 0.2 · 0.5 · 3 tokens; RLOO sees the KL-penalised sums
    kl_roll = roll | {"ref_logp": logp - 0.5}
    rloo_kl = _ppo(tiny_backbone, cls=GRPO, estimator="rloo", kl_in="reward", beta=0.2, kl_estimator="k1")
    penalised = rewards - 0.2 * 0.5 * 3
    assert torch.allclose(rloo_kl.compute_advantages(kl_roll, rewards)[0], rloo_advantages(penalised, 4))
    rpp_kl = _ppo(tiny_backbone, cls=GRPO, estimator="reinforce_pp", kl_in="reward", beta=0.2, kl_estimator="k1")
    adv = rpp_kl.compute_advantages(kl_roll, rewards)[0]
    assert not torch.allclose(adv[:, 0], adv[:, 2])  # the return at the first token carries 3 tokens of KL


def test_ppo_gae_advantages_are_whitened_and_the_returns_kept(tiny_backbone, tokenizer):
    module = _ppo(tiny_backbone)
    module.configure_model()
    g = torch.Generator().manual_seed(1)
    roll = {"prompt_ids": torch.randint(5, 400, (4, 5), generator=g), "prompt_mask": torch.ones(4, 5, dtype=torch.long),
            "completion_ids": torch.randint(5, 400, (4, 3), generator=g),
            "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]),
            "old_logp": torch.zeros(4, 3), "ref_logp": None}
    roll["loss_mask"] = roll["completion_mask"].float()
    adv, log = module.compute_advantages(roll, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    m = roll["loss_mask"].bool()
    assert abs(adv[m].mean()) < 1e-5 and abs(adv[m].std() - 1) < 1e-4 and torch.equal(adv[~m], torch.zeros(3))
    # V = 0 (zero head), γ = 1: the λ-return R_t = λ^(steps to the end) · outcome
    assert torch.allclose(roll["returns"], torch.tensor([[0.95**2, 0.95, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]]))
    assert float(log["train/value_mean"]) == 0.0


@pytest.mark.parametrize(("override", "message"), [
    ({"estimator": "ppo"}, "module.estimator: 'ppo' is not one of group, rloo, reinforce_pp, gae"),
    ({"kl_in": "both"}, "module.kl_in: 'both' is not one of loss, reward"),
    ({"gamma": 1.5}, r"module.gamma: must be a number in \[0.0, 1.0\]"),
    ({"vf_clip": 0.0}, r"module.vf_clip: must be a number in \(0.0, inf\]"),
    ({"critic": {"source": "value"}}, "module.critic.source: 'value' is not one of policy, reward_model"),
    ({"critic": {"source": "reward_model"}}, "module.critic.path: source=reward_model needs"),
    ({"critic": {"learning_rate": 1.0}}, r"module.critic: unknown key\(s\) \['learning_rate'\]"),
    ({"critic": {"warmup_rollouts": -1}}, "module.critic.warmup_rollouts"),
    ({"supervision": "process"}, "module.supervision: 'process' needs step rewards"),
    ({"dynamic_sampling": True}, "module.dynamic_sampling: not with PPO"),
])
def test_bad_ppo_settings_fail_naming_the_key(tiny_backbone, override, message):
    with pytest.raises(ValueError, match=message):
        _ppo(tiny_backbone, **override)


def test_grpo_refuses_rloo_with_a_group_of_one(tiny_backbone):
    with pytest.raises(ValueError, match="module.group_size"):
        _ppo(tiny_backbone, cls=GRPO, estimator="rloo", group_size=1)


@pytest.mark.ddp
def test_ppo_stage_under_ddp_with_two_cpu_processes(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    args = ["stage=ppo", "backbone=tiny", "backbone.name_or_path=null", "debug=fast", "trainer=ddp_sim",
            "callbacks.progress_bar=null", "data.source.sizes={train:64,val:8,test:8}", "module.group_size=2",
            "module.max_new_tokens=8", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run([sys.executable, "-m", "r1lab.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"train/reward", "train/value_loss", "train/explained_variance", "test/accuracy"} <= set(metrics)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["grpo_rollouts_done"] == 4
    assert any(k.startswith("critic.") for k in ckpt["state_dict"])


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rloo", "reinforce_pp"])
def test_the_critic_free_estimators_raise_the_mean_reward(tiny_backbone, tokenizer, estimator):
    torch.manual_seed(0)
    module = _ppo(tiny_backbone, cls=GRPO, estimator=estimator, group_size=8)
    record = Record("train/reward")
    _fit(module, _data(tokenizer, prompts_per_step=4), steps=25, callbacks=[record])
    rewards = record.values["train/reward"]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards


def test_the_critic_can_start_from_a_scalar_reward_models_export(tiny_backbone, tmp_path):
    from r1lab.rm.model import build_reward_model, reward_head

    rm = build_reward_model(tiny_backbone)
    torch.nn.init.constant_(reward_head(rm).weight, 0.01)
    rm.save_pretrained(tmp_path / "rm")
    tiny_backbone.tokenizer.save_pretrained(tmp_path / "rm")
    module = _ppo(tiny_backbone, critic={"source": "reward_model", "path": str(tmp_path / "rm")})
    module.configure_model()
    assert torch.equal(reward_head(module.critic.model).weight, reward_head(rm).weight)
    prompt, completion = torch.randint(5, 400, (1, 4)), torch.randint(5, 400, (1, 3))
    values = module.critic(prompt, torch.ones_like(prompt), completion, torch.ones_like(completion))
    assert values.shape == (1, 3) and torch.count_nonzero(values) == 3
    with pytest.raises(ValueError, match="module.critic.path: .* is not a scalar reward model"):
        _ppo(tiny_backbone, critic={"source": "reward_model", "path": str(tmp_path)}).configure_model()
