"""GRPO (DeepSeekMath arXiv 2402.03300 §4; DeepSeek-R1 arXiv 2501.12948 §2.2): R1-Zero and reasoning RL.

One training step has one visible shape::

    sample G completions per prompt (no grad)      -> score with the rewards -> group advantages
    for epoch in range(μ): for mini-batch in shuffled(rollout):
        for micro-batch: loss = grpo_loss(...); manual_backward
        clip_gradients; optimizer.step; scheduler.step; zero_grad
    log_dict(...)

No value model. The per-token log-probs at sampling time are π_old (they matter once μ > 1 or the
rollout is split into several mini-batches; with one step per rollout ρ = 1 in value, not in
gradient). The frozen reference model exists only when β > 0 and can be reset to the policy every N
rollouts (R1 resets it every 400 steps). Where this departs from the papers, the knob says so:
clip-higher (DAPO), advantage scaling and token-sum aggregation (Dr. GRPO), token-mean (DAPO), the
critic-free estimators RLOO and REINFORCE++ in place of group normalisation (``estimator``), the KL
as a per-token penalty in the reward instead of the loss (``kl_in: reward``), process supervision
(DeepSeekMath §4.1.3: ``supervision``) and dynamic sampling (DAPO), both in ``modules/grpo_process.py``.
PPO (``modules/ppo.py``) is this class with a value model and GAE: the same rollout, loss and
μ/mini-batch loop.

Lightning's ``trainer.max_steps`` counts optimizer steps: μ × mini_batches per rollout.
"""

from __future__ import annotations

import copy
import time

import torch

from r1lab.checks import check_choice, check_number
from r1lab.evaluation import examples_markdown
from r1lab.generation import SamplingParams, mix_seed, sequence_logprobs
from r1lab.modules.base import PolicyModule, peak_memory_gb
from r1lab.modules.grpo_process import DynamicSampling, ProcessSupervision
from r1lab.rewards.compose import RewardSet
from r1lab.rl import (
    ADVANTAGE_SCALES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    discounted_returns,
    group_advantages,
    grpo_loss,
    kl_estimate,
    rloo_advantages,
    token_rewards,
    whiten,
)
from r1lab.tensors import masked_mean

ESTIMATORS = ("group", "rloo", "reinforce_pp")
KL_PLACES = ("loss", "reward")


class GRPO(ProcessSupervision, DynamicSampling, PolicyModule):
    """Args (besides ``PolicyModule``'s):
        rewards: the ``RewardSet`` (rule rewards, and the neural reward model when configured).
        group_size: G, completions per prompt (R1: 16; DeepSeekMath: 64).
        num_iterations: μ, passes over each rollout (GRPO's sample reuse; R1: 1).
        mini_batches: optimizer steps per pass over a rollout (R1: 16).
        micro_batch_size: sequences per forward/backward (gradient accumulation; None = whole mini-batch).
        max_new_tokens, temperature, top_p: rollout sampling (R1: temperature 1.0).
        beta: KL coefficient (R1: 0.001; DeepSeekMath: 0.04); 0 drops the reference model.
        kl_estimator: k1 | k2 | k3 (Schulman 2020; GRPO uses k3, in the loss).
        ref_reset_every: copy the policy into the reference every N rollouts (R1: 400; 0 = never).
        clip_low, clip_high: ε of the clipped ratio; clip_high > clip_low is DAPO's clip-higher.
        advantage_scale: group (GRPO) | batch | none (Dr. GRPO, arXiv 2503.20783); for ``estimator: group``.
        estimator: group (GRPO's normalisation, arXiv 2402.03300) | rloo (leave-one-out baseline,
            arXiv 2402.14740) | reinforce_pp (batch-normalised returns, arXiv 2501.03262).
        kl_in: loss (GRPO: β·D in the loss) | reward (InstructGPT/REINFORCE++/PPO: −β·D in each token's
            reward, so the advantages carry it and the loss has none).
        aggregation: seq_mean_token_mean (GRPO) | token_mean (DAPO, arXiv 2503.14476) |
            seq_sum_norm (Dr. GRPO), each normalised over the whole mini-batch on all devices.
        mask_truncated: leave completions without EOS out of the loss (DAPO's overlong filtering).
        max_grad_norm: gradient clipping (manual optimisation clips here, not in the trainer).
        seed: base seed of the rollout sampler (combined with the step and the rank).
        supervision, step_rule, step_rewards, answer_step: process supervision
            (``ProcessSupervision.configure_supervision``, ``modules/grpo_process.py``).
        dynamic_sampling, dynamic_sampling_prompts, dynamic_sampling_max_rollouts: DAPO's dynamic
            sampling (``DynamicSampling.configure_dynamic_sampling``).
    """

    not_hparams = (*PolicyModule.not_hparams, "rewards", "step_rewards")  # objects, not plain data
    estimators: tuple[str, ...] = ESTIMATORS
    min_group_size = 2  # G >= 2: a group needs a spread

    def __init__(
        self,
        backbone,
        optimizer=None,
        scheduler=None,
        evaluation: dict | None = None,
        rewards: RewardSet | None = None,
        group_size: int = 8,
        num_iterations: int = 1,
        mini_batches: int = 1,
        micro_batch_size: int | None = None,
        max_new_tokens: int = 96,
        temperature: float = 1.0,
        top_p: float = 1.0,
        beta: float = 0.04,
        kl_estimator: str = "k3",
        ref_reset_every: int = 0,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        advantage_scale: str = "group",
        estimator: str = "group",
        kl_in: str = "loss",
        aggregation: str = "seq_mean_token_mean",
        mask_truncated: bool = False,
        max_grad_norm: float | None = 1.0,
        log_completions_every: int = 50,
        seed: int = 0,
        rollout: dict | None = None,
        nonfinite: str = "stop",
        supervision: str = "outcome",
        step_rule: str = "sentence",
        step_rewards=None,
        answer_step: bool = False,
        dynamic_sampling: bool = False,
        dynamic_sampling_prompts: int = 8,
        dynamic_sampling_max_rollouts: int | None = None,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, evaluation, rollout, nonfinite)
        if rewards is None:
            raise ValueError("module.rewards: GRPO needs at least one reward function")
        check_number("module.group_size", group_size, self.min_group_size, integer=True)
        check_number("module.num_iterations", num_iterations, 1, integer=True)
        check_number("module.mini_batches", mini_batches, 1, integer=True)
        check_number("module.micro_batch_size", micro_batch_size, 1, integer=True, allow_none=True)
        self.sampling = SamplingParams(max_new_tokens, temperature, top_p, key="module")
        check_number("module.beta", beta, 0.0)
        check_choice("module.kl_estimator", kl_estimator, KL_ESTIMATORS)
        check_number("module.ref_reset_every", ref_reset_every, 0, integer=True)
        check_number("module.clip_low", clip_low, 0.0, 1.0)
        check_number("module.clip_high", clip_high, 0.0)
        check_choice("module.advantage_scale", advantage_scale, ADVANTAGE_SCALES)
        check_choice("module.estimator", estimator, self.estimators)
        check_choice("module.kl_in", kl_in, KL_PLACES)
        if estimator in ("group", "rloo") and group_size < 2:
            raise ValueError(f"module.group_size: estimator {estimator!r} needs a group of 2 or more, got {group_size}")
        check_choice("module.aggregation", aggregation, AGGREGATIONS)
        check_number("module.max_grad_norm", max_grad_norm, 0.0, low_open=True, allow_none=True)
        self.configure_supervision(supervision, step_rule, step_rewards, answer_step)
        self.configure_dynamic_sampling(dynamic_sampling, dynamic_sampling_prompts, dynamic_sampling_max_rollouts)
        self.automatic_optimization = False
        self.rewards = rewards
        self.G, self.mu = group_size, num_iterations
        self.mini_batches, self.micro_batch_size = mini_batches, micro_batch_size
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.beta, self.kl_estimator, self.ref_reset_every = beta, kl_estimator, ref_reset_every
        self.clip_low, self.clip_high = clip_low, clip_high
        self.advantage_scale, self.aggregation, self.mask_truncated = advantage_scale, aggregation, mask_truncated
        self.estimator, self.kl_in = estimator, kl_in
        self.max_grad_norm, self.log_completions_every, self.seed = max_grad_norm, log_completions_every, seed
        self.reference: torch.nn.Module | None = None
        self.rollouts_done = 0
        # running totals over the run (kept in checkpoints): completions sampled on all devices, with
        # dynamic sampling's extra ones, and seconds spent in training steps; logged every step they
        # count every step, whatever trainer.log_every_n_steps is (r1lab.compare reads them)
        self.completions_sampled, self.train_seconds = 0.0, 0.0

    def configure_model(self) -> None:
        super().configure_model()
        if self.beta > 0 and self.reference is None:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["grpo_rollouts_done"] = self.rollouts_done
        checkpoint["grpo_totals"] = {"completions_sampled": self.completions_sampled,
                                     "train_seconds": self.train_seconds}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.rollouts_done = checkpoint.get("grpo_rollouts_done", 0)
        totals = checkpoint.get("grpo_totals", {})
        self.completions_sampled = float(totals.get("completions_sampled", 0.0))
        self.train_seconds = float(totals.get("train_seconds", 0.0))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Manual optimisation checks its gradients in ``policy_update`` before stepping."""

    # -- the three phases of a step ------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict, round_: int = 0) -> dict:
        """Sample G completions per prompt and keep what the loss needs (π_old, π_ref, masks).
        ``round_`` > 0: a further round of dynamic sampling in the same step (its own seed stream)."""
        records = [r for r in batch["records"] for _ in range(self.G)]
        self.engine.sync_weights()
        stream = self.global_rank + (round_ * self.trainer.world_size if round_ else 0)
        out = self.engine.generate(batch["prompt_ids"], batch["prompt_mask"], self.sampling, n=self.G,
                                   seed=mix_seed(self.seed, self.rollouts_done, stream))
        prompt_ids, prompt_mask = out.prompt_ids, out.prompt_mask  # (B·G, P): each prompt G times
        mask = out.completion_mask.float()  # (B·G, T)
        if self.mask_truncated:
            mask = mask * (~out.truncated).float().unsqueeze(1)
        ref_logp = None
        if self.reference is not None:
            ref_logp = sequence_logprobs(self.reference, prompt_ids, prompt_mask, out.completion_ids,
                                         out.completion_mask, self.temperature)
        return {
            "records": records, "texts": out.texts, "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask, "completion_ids": out.completion_ids,
            "completion_mask": out.completion_mask, "loss_mask": mask, "old_logp": out.logprobs,
            "ref_logp": ref_logp, "truncated": out.truncated, "engine_logprobs": out.engine_logprobs,
        }

    def score(self, roll: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "rewards" in roll:  # scored while sampling (dynamic sampling)
            return roll.pop("rewards"), roll.pop("per_function")
        prompts = [r["prompt"] for r in roll["records"]]
        total, per_function = self.rewards.score(prompts, roll["texts"], roll["records"])
        return total.to(self.device).float(), {k: v.to(self.device).float() for k, v in per_function.items()}

    def _global(self, value: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return value.float()
        return self.trainer.strategy.reduce(value.float(), reduce_op="sum")

    def policy_update(self, roll: dict, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """μ passes over shuffled mini-batches; returns the mean of each loss metric."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        n = advantages.shape[0]
        world = self.trainer.world_size
        sums: dict[str, float] = {}
        count = 0
        generator = torch.Generator().manual_seed(self.seed + 31 * self.rollouts_done)
        for _ in range(self.mu):
            for mini in torch.randperm(n, generator=generator).chunk(self.mini_batches):
                mask = roll["loss_mask"][mini]
                # whole-mini-batch normalisers on all devices: the loss does not depend on the split
                num_sequences = self._global(torch.tensor(float(len(mini)), device=self.device))
                num_tokens = self._global(mask.sum()).clamp(min=1)
                micro_size = self.micro_batch_size or len(mini)
                finite = True
                for micro in mini.split(micro_size):
                    logp, entropy = sequence_logprobs(
                        self.policy, roll["prompt_ids"][micro], roll["prompt_mask"][micro],
                        roll["completion_ids"][micro], roll["completion_mask"][micro], self.temperature,
                        return_entropy=True,
                    )
                    loss, metrics = grpo_loss(
                        logp, roll["old_logp"][micro], advantages[micro], roll["loss_mask"][micro],
                        ref_logp=None if roll["ref_logp"] is None else roll["ref_logp"][micro],
                        beta=self.beta if self.kl_in == "loss" else 0.0, kl_estimator=self.kl_estimator,
                        clip_low=self.clip_low, clip_high=self.clip_high, aggregation=self.aggregation,
                        num_sequences=num_sequences, num_tokens=num_tokens, max_len=self.max_new_tokens,
                    )
                    if self.kl_in == "reward" and roll["ref_logp"] is not None:  # reported, not in the loss
                        metrics["kl"] = masked_mean(kl_estimate(logp.detach(), roll["ref_logp"][micro],
                                                                self.kl_estimator), roll["loss_mask"][micro])
                    extra, extra_metrics = self.auxiliary_loss(roll, micro, num_tokens)
                    if extra is not None:
                        loss = loss * float(self.trains_policy()) + extra
                        metrics |= extra_metrics
                    if not finite or not self.finite_or_skip("train/loss", loss):
                        finite = False  # no backward of a NaN: this optimiser step is skipped
                        continue
                    # DDP averages gradients over ranks; the normalisers already cover all ranks.
                    self.manual_backward(loss * world)
                    metrics["entropy"] = masked_mean(entropy, roll["completion_mask"][micro].float())
                    metrics["loss"] = loss.detach()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                if not finite or not self.finite_or_skip("the gradient norm", self.gradient_norm()):
                    self.drop_gradients()  # the optimiser leaves every weight as it is
                else:
                    self.clip_all_gradients(opt)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if sched is not None:
                    sched.step()
        return {k: torch.tensor(v / max(count, 1)) for k, v in sums.items()}

    # -- hooks that PPO fills in (modules/ppo.py) ----------------------------------------------
    def auxiliary_loss(self, roll: dict, micro: torch.Tensor, num_tokens: torch.Tensor):
        """A loss added to the policy's in each micro-batch (PPO: the value loss); None here."""
        return None, {}

    def trains_policy(self) -> bool:
        """False while only an auxiliary model trains (PPO's critic warm-up)."""
        return True

    def clip_all_gradients(self, opt) -> None:
        if self.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def whole_batch_totals(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(count, sum, sum of squares) of ``x`` on the mask over every device: ``whiten``'s statistics."""
        m = mask.float()
        return tuple(self._global(v) for v in (m.sum(), (x * m).sum(), (x * x * m).sum()))

    def token_rewards(self, roll: dict, rewards: torch.Tensor) -> torch.Tensor:
        """(N, T) rewards per token: the outcome at the last one, −β·D at each with ``kl_in: reward``."""
        kl = None
        if self.kl_in == "reward" and roll["ref_logp"] is not None:
            kl = kl_estimate(roll["old_logp"], roll["ref_logp"], self.kl_estimator)  # (N, T)
        return token_rewards(rewards, roll["completion_mask"], kl, self.beta)

    def compute_advantages(self, roll: dict, rewards: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Â from the rollout's rewards by ``estimator``: (N,) per completion or (N, T) per token.

        With ``kl_in: reward`` each token's reward carries −β·D (``token_rewards``): group and RLOO
        see its sum per completion (RLOO's sequence-level KL-penalised reward), REINFORCE++ its return
        at each token.
        """
        mask = roll["loss_mask"]
        per_token = self.token_rewards(roll, rewards)  # (N, T)
        if self.estimator == "reinforce_pp":
            returns = discounted_returns(per_token, mask)
            return whiten(returns, mask, self.whole_batch_totals(returns, mask)), {}
        sequence = per_token.sum(-1) if self.kl_in == "reward" else rewards  # (N,)
        if self.estimator == "rloo":
            return rloo_advantages(sequence, self.G), {}
        return group_advantages(sequence, self.G, scale=self.advantage_scale), {}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        t0 = time.perf_counter()
        if self.reference is not None and self.ref_reset_every and self.rollouts_done \
                and self.rollouts_done % self.ref_reset_every == 0:
            self.reference.load_state_dict(self.policy.state_dict())
        roll = self._dynamic_rollout(batch) if self.dynamic_sampling else self.rollout(batch)
        t_sample = time.perf_counter() - t0  # with dynamic sampling, its rounds' scoring too
        rewards, per_function = self.score(roll)
        roll["per_function"] = per_function  # the answer step of process supervision reads accuracy
        advantages, advantage_log = self.compute_advantages(roll, rewards)  # (B·G,) or (B·G, T)
        advantages, step_log = self.apply_supervision(roll, advantages)  # process supervision: (B·G, T)
        t_score = time.perf_counter() - t0 - t_sample
        advantages, engine_log = self.engine_correction(roll, advantages)  # engines with their own weights
        loss_metrics = self.policy_update(roll, advantages)
        self.rollouts_done += 1
        elapsed = time.perf_counter() - t0
        drawn = roll["completion_mask"].shape[0] + float(roll.get("dynamic_log", {}).get("train/extra_rollouts", 0.0))
        self.completions_sampled += float(self._global(torch.tensor(drawn, device=self.device)))
        self.train_seconds += elapsed
        lengths = roll["completion_mask"].sum(-1).float()
        spread = rewards.view(-1, self.G).std(-1)
        log = {
            "train/reward": rewards.mean(), "train/reward_std": rewards.std(),
            "train/zero_std_groups": (spread < 1e-6).float().mean(),
            "train/completion_length": lengths.mean(), "train/completion_length_max": lengths.max(),
            "train/truncated": roll["truncated"].float().mean(),
            "train/tokens_per_s": torch.tensor(lengths.sum().item() / max(t_sample, 1e-9)),
            "train/step_s": torch.tensor(elapsed), "train/sample_share": torch.tensor(t_sample / elapsed),
            "train/score_share": torch.tensor(t_score / elapsed),
            "train/peak_memory_gb": torch.tensor(peak_memory_gb(self.device)),
            "train/params_in_memory": torch.tensor(float(sum(p.numel() for p in self.parameters()))),
            "train/completions_sampled": torch.tensor(self.completions_sampled),
            "train/train_seconds": torch.tensor(self.train_seconds),
        }
        log |= {f"train/reward/{k}": v.mean() for k, v in per_function.items()}
        for f in self.rewards.functions:  # a neural reward's raw score: its normalised mean is ~0 by design
            if getattr(f.fn, "last_raw", None) is not None:
                log[f"train/reward/{f.name}_raw"] = f.fn.last_raw.mean()
        for name in ("accuracy", "format", "language"):
            if name in per_function:
                log[f"train/{name}"] = per_function[name].mean()
        log |= {f"train/{k}": v for k, v in loss_metrics.items()}
        log |= engine_log | advantage_log | step_log | roll.pop("dynamic_log", {})
        if self.nonfinite == "skip":
            log["train/skipped_steps"] = torch.tensor(float(self.skipped_steps))
        self.log_dict({k: v.to(self.device).float() for k, v in log.items()}, sync_dist=True, prog_bar=False)
        self.log("train/rollout", float(self.rollouts_done), prog_bar=True)
        if self.log_completions_every and (self.rollouts_done - 1) % self.log_completions_every == 0:
            correct = per_function.get("accuracy", rewards)
            rows = [{"prompt": r["prompt"], "completion": t, "answer": r.get("answer"), "correct": float(c)}
                    for r, t, c in zip(roll["records"][:: self.G], roll["texts"][:: self.G], correct[:: self.G])]
            self._log_text("train/completions", examples_markdown(rows[:4]))

    # -- the train/inference mismatch of an engine with its own weights (vLLM) ------------------
    @torch.no_grad()
    def engine_correction(self, roll: dict, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """π_old, the mismatch metrics and truncated importance sampling for a rollout whose log-probs
        came from an engine's own copy of the weights (``Rollout.engine_logprobs``); a no-op otherwise.

        As in TRL and veRL, π_old becomes the policy's own recomputation of the sampled tokens'
        log-probs (so the clipped ratio starts at exactly 1 and clips only what the updates moved), and
        the engine's log-probs serve only to measure the mismatch, ``train/engine_logprob_diff_mean``
        and ``_max`` (|log π_train − log π_engine| over completion tokens; under DDP each rank's max,
        averaged). With the engine's ``tis_cap`` C, each token's surrogate is weighted by
        w = min(exp(log π_train − log π_engine), C) (truncated importance sampling; TRL's
        ``vllm_importance_sampling_correction``): folded into per-token advantages, which is the same
        as weighting the surrogate since w > 0, and leaves the KL term unweighted, as TRL does.
        """
        if not roll.get("engine_logprobs"):
            return advantages, {}
        size = self.micro_batch_size or len(advantages)
        train = torch.cat([
            sequence_logprobs(self.policy, roll["prompt_ids"][rows], roll["prompt_mask"][rows],
                              roll["completion_ids"][rows], roll["completion_mask"][rows], self.temperature)
            for rows in torch.arange(len(advantages), device=advantages.device).split(size)
        ]).float()
        mask = roll["completion_mask"].float()
        delta = (train - roll["old_logp"]) * mask  # log π_train − log π_engine, 0 off the completion
        log = {"train/engine_logprob_diff_mean": masked_mean(delta.abs(), mask),
               "train/engine_logprob_diff_max": delta.abs().max()}
        roll["engine_logp"], roll["old_logp"] = roll["old_logp"], train
        cap = getattr(self.engine, "tis_cap", None)
        if cap is None:
            return advantages, log
        ratio = delta.exp()
        log |= {"train/tis_weight_mean": masked_mean(ratio.clamp(max=cap), mask),
                "train/tis_clipped": masked_mean((ratio > cap).float(), mask)}
        per_token = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)  # (N, T) or (N, 1)
        return per_token * ratio.clamp(max=cap) * mask, log
