"""GRPO's process supervision and dynamic sampling, as the GRPO module's mixins (``modules/grpo.py``).

``ProcessSupervision`` (DeepSeekMath arXiv 2402.03300 §4.1.3): the advantages of a rollout under
``module.supervision``, from the steps of each completion and their rewards. ``DynamicSampling``
(DAPO arXiv 2503.14476 §3.2): the rollout of a step sampled in rounds until its batch holds only
groups with a reward spread. Both read the GRPO module's settings (``self.G``, ``self.supervision``,
``self.step_rule``, ``self.step_rewards``, ``self.dynamic_prompts``, ``self.dynamic_max_rollouts``)
and call its ``rollout`` and ``score``; the math is in ``r1lab.rl.process`` and ``r1lab.rl.dynamic``.
"""

from __future__ import annotations

import torch

from r1lab.checks import check_choice, check_number
from r1lab.rewards.steps import RuleStepReward, split_steps, step_pattern, token_spans
from r1lab.rl.dynamic import concat_rollouts, informative_groups, select_groups, take_rows
from r1lab.rl.process import SUPERVISIONS, combined_advantages, pad_steps


class ProcessSupervision:
    """Outcome, process or both kinds of supervision (``apply_supervision``)."""

    def configure_supervision(self, supervision: str = "outcome", step_rule: str = "sentence", step_rewards=None,
                              answer_step: bool = False) -> None:
        """Check and keep the settings (errors name the ``module.`` key).

        Args:
            supervision: outcome (one advantage per completion, DeepSeekMath §4.1.2) | process
                (per-token advantages from step rewards, §4.1.3) | both (their sum; see
                ``r1lab.rl.process.combined_advantages``).
            step_rule: how a completion's chain of thought is cut into steps: line | sentence | a
                regex whose matches are the steps (``r1lab.rewards.steps.split_steps``).
            step_rewards: the source of step rewards, an object with ``score_steps(prompts,
                completions, references, spans)``: the tiny world's rule verifier (default) or a
                process reward model (``r1lab.rm.ProcessReward``). Used only when supervision is not
                outcome.
            answer_step: with process supervision, the answer as one more step at the completion's
                last token, rewarded by the accuracy reward (Math-Shepherd's and DeepSeekMath's last
                step holds the final answer). Without it the steps inside ``<think>`` are all that
                is rewarded, and a policy raises its step rewards by writing fewer steps (measured:
                docs/process_supervision.md).
        """
        check_choice("module.supervision", supervision, SUPERVISIONS)
        try:
            step_pattern(step_rule)
        except (ValueError, TypeError) as error:
            raise ValueError(f"module.step_rule: {error}") from None
        if step_rewards is not None and not hasattr(step_rewards, "score_steps"):
            raise ValueError(f"module.step_rewards: {step_rewards!r} has no score_steps(prompts, completions, "
                             "references, spans)")
        if not isinstance(answer_step, bool):
            raise ValueError(f"module.answer_step: must be true or false, got {answer_step!r}")
        if answer_step and supervision == "outcome":
            raise ValueError("module.answer_step: adds the answer to the steps of process supervision; set "
                             "module.supervision=process or both (outcome supervision has no steps)")
        self.supervision, self.step_rule, self.answer_step = supervision, step_rule, answer_step
        self.step_rewards = RuleStepReward() if step_rewards is None else step_rewards

    def outcome_advantages(self, roll: dict, rewards: torch.Tensor) -> torch.Tensor:
        """The outcome advantages a step starts from, as ``training_step`` computes them (by
        ``module.estimator``); dynamic sampling tests each round's groups with them."""
        return self.compute_advantages(roll, rewards)[0]  # (B·G,) or (B·G, T)

    def apply_supervision(self, roll: dict, outcome: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The advantages under ``self.supervision`` from the outcome advantages, and the step metrics.

        outcome: ``outcome`` itself, untouched, and no step metrics (steps are never scored).
        process / both: per-token advantages (B·G, T) from the step rewards, plus ``outcome`` for
        both (``r1lab.rl.process.combined_advantages``), and ``train/step_reward`` (mean reward of a
        step), ``train/all_steps_correct`` (share of completions with at least one step, every step's
        reward > 0.5), ``train/steps`` (steps per completion).
        """
        if self.supervision == "outcome":
            return outcome, {}
        steps = self.step_scores(roll)
        advantages = combined_advantages(
            self.supervision, outcome, self.G, seq_len=roll["completion_ids"].shape[1],
            step_rewards=steps["rewards"], step_end_index=steps["ends"], step_mask=steps["mask"],
        )
        real = steps["mask"] & steps["real"].unsqueeze(-1)  # (B·G, K) steps the splitter found
        right = ((steps["rewards"] > 0.5) | ~steps["mask"]).all(-1) & steps["real"]  # (B·G,)
        log = {"train/step_reward": steps["rewards"][real].mean() if real.any() else torch.tensor(0.0),
               "train/all_steps_correct": right.float().mean(), "train/steps": real.sum(-1).float().mean()}
        return advantages, log

    @torch.no_grad()
    def step_scores(self, roll: dict) -> dict[str, torch.Tensor]:
        """The steps of every completion, their rewards and end tokens, padded (cached in ``roll``):
        ``rewards``, ``ends``, ``mask`` (B·G, K) and ``real`` (B·G,), False for a completion in which
        the splitter found no step. Such a completion gets one step ending at its last token with
        reward 0: no verifier credits reasoning it cannot see, and a completion must not escape the
        process reward by writing no steps."""
        if "steps" in roll:
            return roll["steps"]
        eos = self.tokenizer.eos_token_id
        rows = [[t for t, m in zip(ids, mask) if m and t != eos]
                for ids, mask in zip(roll["completion_ids"].tolist(), roll["completion_mask"].tolist())]
        spans = [split_steps(text, self.step_rule) for text in roll["texts"]]
        prompts = [r["prompt"] for r in roll["records"]]
        scores = self.step_rewards.score_steps(prompts, roll["texts"], roll["records"], spans)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731 -- as decode_texts
        lengths = roll["completion_mask"].sum(-1).tolist()
        rewards, ends = [], []
        for row, span, score, length in zip(rows, spans, scores, lengths):
            if span:
                rewards.append([float(x) for x in score])
                ends.append([last for _, last in token_spans(span, row, decode)])
            else:
                rewards.append([0.0])
                ends.append([max(int(length) - 1, 0)])
        if self.answer_step:  # the answer as the last step, at the last token, rewarded by accuracy
            accuracy = self.answer_rewards(roll)
            for i, length in enumerate(lengths):
                rewards[i].append(accuracy[i])
                ends[i].append(max(int(length) - 1, 0))
        r, e, m = pad_steps(rewards, ends)
        roll["steps"] = {"rewards": r.to(self.device), "ends": e.to(self.device), "mask": m.to(self.device),
                         "real": torch.tensor([bool(s) for s in spans], device=self.device)}
        return roll["steps"]

    def answer_rewards(self, roll: dict) -> list[float]:
        """Each completion's accuracy reward: the rollout's own (``roll["per_function"]``, scored once
        per step), else from the accuracy function."""
        scored = roll.get("per_function", {}).get("accuracy")
        if scored is not None:
            return [float(x) for x in scored.tolist()]
        from r1lab.rewards import accuracy_reward

        prompts = [r["prompt"] for r in roll["records"]]
        return [float(accuracy_reward(p, t, r)) for p, t, r in zip(prompts, roll["texts"], roll["records"])]


class DynamicSampling:
    """DAPO's dynamic sampling (``_dynamic_rollout``)."""

    def configure_dynamic_sampling(self, dynamic_sampling: bool = False, dynamic_sampling_prompts: int = 8,
                                   dynamic_sampling_max_rollouts: int | None = None) -> None:
        """Check and keep the settings (errors name the ``module.`` key).

        Args:
            dynamic_sampling: DAPO's dynamic sampling (arXiv 2503.14476, §3.2): drop groups whose
                advantages are all 0 (rewards without spread) and fill the batch with informative
                ones. The loader's batch (``data.batch_size``) is then the pool of candidate prompts
                of a step, of which ``dynamic_sampling_prompts`` groups are trained.
            dynamic_sampling_prompts: B, groups trained per step under dynamic sampling (<= the pool).
            dynamic_sampling_max_rollouts: the most completions sampled per step beyond B·G (None:
                as many as the pool holds).
        """
        if not isinstance(dynamic_sampling, bool):
            raise ValueError(f"module.dynamic_sampling: must be true or false, got {dynamic_sampling!r}")
        check_number("module.dynamic_sampling_prompts", dynamic_sampling_prompts, 1, integer=True)
        check_number("module.dynamic_sampling_max_rollouts", dynamic_sampling_max_rollouts, 0, integer=True,
                     allow_none=True)
        self.dynamic_sampling, self.dynamic_prompts = dynamic_sampling, dynamic_sampling_prompts
        self.dynamic_max_rollouts = dynamic_sampling_max_rollouts

    @torch.no_grad()
    def _dynamic_rollout(self, batch: dict) -> dict:
        """Sample the pool's prompts in rounds until B = ``dynamic_sampling_prompts`` informative
        groups are found, the pool is used up, or the extra completions reach the cap.

        Where the extra prompts come from: the loader's batch is the pool (DAPO draws further
        prompts; here they are drawn up front, so a step consumes exactly one loader batch and a
        resumed run sees the same prompts). Round 0 samples the pool's first B prompts with the seed
        a run without dynamic sampling uses; each later round the next prompts, as many as the
        informative share so far predicts are missing (all that remain when none was informative),
        within the cap. The batch keeps the first B informative groups in sampling order and is
        filled with constant ones when there are too few (``r1lab.rl.dynamic.select_groups``), so
        its size never changes. Logs ``train/dynamic_fill_rate`` (informative groups / B),
        ``train/extra_rollouts`` (completions sampled beyond B·G) and ``train/dynamic_rounds``.
        """
        records = batch["records"]
        size = self.dynamic_prompts
        if size > len(records):
            raise ValueError(f"module.dynamic_sampling_prompts={size} exceeds the {len(records)} prompts of a "
                             "loader batch (data.batch_size), the pool dynamic sampling draws from")
        cap = self.dynamic_max_rollouts
        cap = (len(records) - size) * self.G if cap is None else cap
        parts, flags, start, round_ = [], [], 0, 0
        while start < len(records):
            need = size - sum(flags)
            if round_ == 0:
                count = size
            else:
                rate = sum(flags) / len(flags)
                count = need if rate == 1 else (len(records) if rate == 0 else -(-need // rate))
                count = min(int(count), len(records) - start, (cap - (start - size) * self.G) // self.G)
            if count <= 0 or need <= 0:
                break
            rows = torch.arange(start, start + count)
            part = self.rollout(self._prompt_rows(batch, rows), round_)
            part["rewards"], part["per_function"] = self.score(part)
            advantages, _ = self.apply_supervision(part, self.outcome_advantages(part, part["rewards"]))
            flags += informative_groups(advantages, self.G).tolist()
            parts.append(part)
            start, round_ = start + count, round_ + 1
        keep, informative = select_groups(flags, size)
        rows = torch.tensor([g * self.G + j for g in keep for j in range(self.G)])
        roll = take_rows(concat_rollouts(parts, self.tokenizer.pad_token_id), rows)
        roll["dynamic_log"] = {"train/dynamic_fill_rate": torch.tensor(informative / size),
                               "train/extra_rollouts": torch.tensor(float((start - size) * self.G)),
                               "train/dynamic_rounds": torch.tensor(float(round_))}
        return roll

    @staticmethod
    def _prompt_rows(batch: dict, rows: torch.Tensor) -> dict:
        mask = batch["prompt_mask"][rows]
        first = int(mask.any(0).nonzero()[0]) if mask.any() else 0  # drop columns that are padding in every row
        return {"records": [batch["records"][i] for i in rows.tolist()],
                "prompt_ids": batch["prompt_ids"][rows, first:], "prompt_mask": mask[:, first:]}
