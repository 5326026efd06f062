"""PPO with a value model (Schulman et al., arXiv 1707.06347; InstructGPT, arXiv 2203.02155 §3.5), next to GRPO.

The step is GRPO's (``modules/grpo.py``), with one change in the advantages and one in the loss::

    sample completions (no grad) -> score -> V_old = critic(rollout) -> token rewards (outcome at the
        last token, −β·D per token when ``kl_in: reward``) -> GAE(γ, λ) -> Â (whitened), returns R
    for epoch in range(μ): for mini-batch: for micro-batch:
        loss = grpo_loss(Â per token) + vf_coef · clipped value loss(V, V_old, R); manual_backward
        clip the policy's and the critic's gradients separately; step; zero_grad

The policy and the critic are separate networks in one optimiser (two parameter groups: the critic
has its own learning rate and weight decay), so the policy's loss reaches only the policy and the
value loss only the critic, and Lightning's step count stays one per optimiser step. During the
critic warm-up (``critic.warmup_rollouts``) the policy's loss is left out and its weights do not move.
What GRPO saves: this critic is a second model of the policy's size, with its gradients and Adam
state, and a forward and backward of its own on every rollout.
"""

from __future__ import annotations

import torch

from r1lab.checks import check_choice, check_number
from r1lab.modules.grpo import ESTIMATORS, GRPO
from r1lab.rl import aggregate, explained_variance, gae, value_loss, whiten
from r1lab.rm.value import CRITIC_SOURCES, build_value_model
from r1lab.tensors import masked_mean

CRITIC_DEFAULTS = {"source": "policy", "path": None, "lr": 1.0e-4, "weight_decay": 0.0, "max_grad_norm": 1.0,
                   "warmup_rollouts": 0}


class PPO(GRPO):
    """Args (besides ``GRPO``'s; ``estimator`` is ``gae`` and ``kl_in`` defaults to ``reward``):
        critic: the value model: ``source`` policy (a copy of the policy's body, zero head) |
            reward_model (the scalar reward model's export at ``path``); ``lr``, ``weight_decay``,
            ``max_grad_norm`` of its parameter group; ``warmup_rollouts``: rollouts on which only the
            critic trains (the policy's loss is left out).
        gamma, lam: GAE's discount γ and λ (OpenRLHF: 1.0, 0.95).
        vf_clip: the value loss's clip range around V_old (None: no clipping).
        vf_coef: weight of the value loss next to the policy's.
        whiten_advantages: normalise Â over the whole batch's completion tokens (all devices).
    """

    estimators = (*ESTIMATORS, "gae")
    min_group_size = 1  # GAE needs no group: one completion per prompt is PPO's usual setting

    def __init__(self, *args, critic: dict | None = None, gamma: float = 1.0, lam: float = 0.95,
                 vf_clip: float | None = 0.2, vf_coef: float = 1.0, whiten_advantages: bool = True,
                 estimator: str = "gae", kl_in: str = "reward", **kwargs) -> None:
        super().__init__(*args, estimator=estimator, kl_in=kl_in, **kwargs)
        unknown = set(critic or {}) - set(CRITIC_DEFAULTS)
        if unknown:
            raise ValueError(f"module.critic: unknown key(s) {sorted(unknown)}; valid: {sorted(CRITIC_DEFAULTS)}")
        self.critic_cfg = CRITIC_DEFAULTS | dict(critic or {})
        check_choice("module.critic.source", self.critic_cfg["source"], CRITIC_SOURCES)
        check_number("module.critic.lr", self.critic_cfg["lr"], 0.0, low_open=True)
        check_number("module.critic.weight_decay", self.critic_cfg["weight_decay"], 0.0)
        check_number("module.critic.max_grad_norm", self.critic_cfg["max_grad_norm"], 0.0, low_open=True,
                     allow_none=True)
        check_number("module.critic.warmup_rollouts", self.critic_cfg["warmup_rollouts"], 0, integer=True)
        if self.critic_cfg["source"] == "reward_model" and not self.critic_cfg["path"]:
            raise ValueError("module.critic.path: source=reward_model needs the reward model's export folder")
        check_number("module.gamma", gamma, 0.0, 1.0)
        check_number("module.lam", lam, 0.0, 1.0)
        check_number("module.vf_clip", vf_clip, 0.0, low_open=True, allow_none=True)
        check_number("module.vf_coef", vf_coef, 0.0)
        if estimator != "gae" and critic is not None:
            raise ValueError(f"module.critic: estimator {estimator!r} uses no value model; set module.estimator=gae")
        if estimator == "gae" and self.supervision != "outcome":
            raise ValueError(f"module.supervision: {self.supervision!r} needs step rewards in the advantages; GAE "
                             "takes the outcome reward at the last token (use supervision=outcome with PPO)")
        if estimator == "gae" and self.dynamic_sampling:
            raise ValueError("module.dynamic_sampling: not with PPO's value model (GAE's advantages do not vanish "
                             "for groups of equal rewards); use it with a critic-free estimator")
        self.gamma, self.lam, self.vf_clip, self.vf_coef = gamma, lam, vf_clip, vf_coef
        self.whiten_advantages = whiten_advantages
        self.critic: torch.nn.Module | None = None

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"

    def configure_model(self) -> None:
        super().configure_model()
        if self.uses_critic and self.critic is None:
            self.critic = build_value_model(self.backbone, self.policy, self.critic_cfg["source"],
                                            self.critic_cfg["path"]).train()

    def configure_optimizers(self):
        if self.critic is None:
            return super().configure_optimizers()
        critic_ids = {id(p) for p in self.critic.parameters()}
        policy = [p for p in self.parameters() if p.requires_grad and id(p) not in critic_ids]
        critic = [p for p in self.critic.parameters() if p.requires_grad]
        groups = [{"params": policy},
                  {"params": critic, "lr": self.critic_cfg["lr"], "weight_decay": self.critic_cfg["weight_decay"]}]
        return self.optimizers_for(groups)

    # -- advantages: GAE on the critic's values ------------------------------------------------
    @torch.no_grad()
    def values(self, roll: dict) -> torch.Tensor:
        size = self.micro_batch_size or len(roll["completion_ids"])
        rows = torch.arange(len(roll["completion_ids"]), device=roll["completion_ids"].device).split(size)
        return torch.cat([self.critic(roll["prompt_ids"][r], roll["prompt_mask"][r], roll["completion_ids"][r],
                                      roll["completion_mask"][r]) for r in rows])

    def compute_advantages(self, roll: dict, rewards: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if not self.uses_critic:
            return super().compute_advantages(roll, rewards)
        mask = roll["loss_mask"]
        per_token = self.token_rewards(roll, rewards)  # (N, T)
        old_values = self.values(roll)  # (N, T)
        advantages, returns = gae(per_token, old_values, roll["completion_mask"], self.gamma, self.lam)  # (N, T)
        roll["old_values"], roll["returns"] = old_values, returns
        log = {"train/value_mean": masked_mean(old_values, mask), "train/return_mean": masked_mean(returns, mask),
               "train/explained_variance": explained_variance(old_values, returns, mask),
               "train/critic_warmup": torch.tensor(float(not self.trains_policy()))}
        if self.whiten_advantages:
            advantages = whiten(advantages, mask, self.whole_batch_totals(advantages, mask))
        return advantages * mask, log

    # -- the value loss, in GRPO's micro-batch loop --------------------------------------------
    def auxiliary_loss(self, roll: dict, micro: torch.Tensor, num_tokens: torch.Tensor):
        if not self.uses_critic:
            return None, {}
        mask = roll["loss_mask"][micro]
        values = self.critic(roll["prompt_ids"][micro], roll["prompt_mask"][micro], roll["completion_ids"][micro],
                             roll["completion_mask"][micro])  # (b, T)
        per_token, clipped = value_loss(values, roll["old_values"][micro], roll["returns"][micro], self.vf_clip)
        loss = aggregate(per_token, mask, "token_mean", num_tokens=num_tokens)
        metrics = {"value_loss": loss.detach(), "value_clip_frac": masked_mean(clipped.float(), mask)}
        return self.vf_coef * loss, metrics

    def trains_policy(self) -> bool:
        return self.rollouts_done >= self.critic_cfg["warmup_rollouts"]

    def clip_all_gradients(self, opt) -> None:
        if self.critic is None:
            return super().clip_all_gradients(opt)
        critic_ids = {id(p) for p in self.critic.parameters()}
        policy = [p for p in self.parameters() if p.grad is not None and id(p) not in critic_ids]
        if not self.trains_policy():
            for p in policy:
                p.grad = None  # the warm-up: AdamW skips parameters without a gradient
        elif self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(policy, self.max_grad_norm)
        if self.critic_cfg["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_([p for p in self.critic.parameters() if p.grad is not None],
                                           self.critic_cfg["max_grad_norm"])
