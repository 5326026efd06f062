"""GRPO with process supervision (DeepSeekMath §4.1.3): hand-computed step advantages, the step wiring
from sampled text to tensors, outcome supervision unchanged, and a short process-supervised run."""

import pytest
import torch

from r1lab.generation import sequence_logprobs
from r1lab.modules import grpo as grpo_mod
from r1lab.modules.grpo import GRPO
from r1lab.rl.advantages import group_advantages
from r1lab.rl.process import combined_advantages, pad_steps
from test_grpo import _data, _fit, _module, digit_share


def test_process_advantages_two_groups_uneven_steps_and_masks_by_hand():
    # group 0: completion 0 has steps [1, 0] ending at tokens 1, 3; completion 1 one step [1] ending at 2
    # group 1: completion 2 has steps [0, 0, 1] ending at 0, 1, 4; completion 3 one step [0] ending at 5
    rewards, ends, mask = pad_steps([[1, 0], [1], [0, 0, 1], [0]], [[1, 3], [2], [0, 1, 4], [5]])
    assert rewards.shape == ends.shape == mask.shape == (4, 3)
    assert mask.sum(-1).tolist() == [2, 1, 3, 1]
    adv = combined_advantages("process", torch.zeros(4), 2, seq_len=6, step_rewards=rewards,
                              step_end_index=ends, step_mask=mask)
    # group 0: steps {1, 0, 1}, mean 2/3, sample std √(1/3) → r̃ = +0.5774, −1.1547, +0.5774
    # group 1: steps {0, 0, 1, 0}, mean 1/4, sample std 1/2 → r̃ = −0.5, −0.5, +1.5, −0.5
    # Â_{i,t} = Σ of r̃ of the steps ending at or after t
    a, b = 0.57735, 1.15470
    expected = torch.tensor([
        [a - b, a - b, -b, -b, 0.0, 0.0],
        [a, a, a, 0.0, 0.0, 0.0],
        [0.5, 1.0, 1.5, 1.5, 1.5, 0.0],
        [-0.5, -0.5, -0.5, -0.5, -0.5, -0.5],
    ])
    torch.testing.assert_close(adv, expected, atol=1e-3, rtol=1e-3)
    # both: the outcome advantage of each completion added to every token of it
    outcome = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2)  # group 0: ±0.7071; group 1: constant, 0
    both = combined_advantages("both", outcome, 2, seq_len=6, step_rewards=rewards, step_end_index=ends,
                               step_mask=mask)
    torch.testing.assert_close(both, expected + torch.tensor([0.70711, -0.70711, 0.0, 0.0]).unsqueeze(-1),
                               atol=1e-3, rtol=1e-3)
    # outcome: exactly group_advantages, one value per completion
    assert combined_advantages("outcome", outcome, 2, seq_len=6) is outcome
    with pytest.raises(ValueError, match="needs step rewards"):
        combined_advantages("process", outcome, 2, seq_len=6)


def _roll(tokenizer, completions, prompt="What is 12 + 7 - 5?"):
    rows = [tokenizer(c, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for c in completions]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"records": [{"prompt": prompt, "answer": "14", "task": "arith"}] * len(rows), "texts": completions,
            "completion_ids": ids, "completion_mask": mask}


def test_step_scores_from_sampled_text_to_tensors(tiny_backbone, tokenizer):
    module = _module(tiny_backbone, supervision="process", group_size=2)
    roll = _roll(tokenizer, ["<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>",
                             "<think> 12 plus 7 is 18. 18 minus 5 is 13. </think> <answer> 13 </answer>",
                             "<answer> 14 </answer>",  # no steps: one step at the last token, reward 0
                             "<think> 12 plus 7 is 19. 19 minus"])  # cut mid-step
    steps = module.step_scores(roll)
    assert steps["rewards"].tolist() == [[1, 1], [0, 0], [0, 0], [1, 0]]
    assert steps["mask"].tolist() == [[True, True], [True, True], [True, False], [True, True]]
    assert steps["real"].tolist() == [True, True, False, True]
    # "<think>", " ", "1", "2", " plus", " ", "7", " is", " ", "1", "9", "." ...: the first step ends at token 11
    assert steps["ends"][0].tolist() == [11, 22] and steps["ends"][3].tolist() == [11, 15]
    assert steps["ends"][2, 0].item() == roll["completion_mask"][2].sum().item() - 1
    advantages, log = module.apply_supervision(roll, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert advantages.shape == roll["completion_ids"].shape
    assert (advantages[0, :12] > 0).all() and (advantages[1, :12] < 0).all()  # right steps up, wrong ones down
    assert log["train/all_steps_correct"].item() == pytest.approx(0.25)
    assert log["train/step_reward"].item() == pytest.approx(3 / 6)  # the 6 steps the splitter found
    assert log["train/steps"].item() == pytest.approx(6 / 4)


def test_the_answer_step_adds_the_accuracy_reward_at_the_last_token(tiny_backbone, tokenizer):
    """module.answer_step: the answer is one more step, at the completion's last token, rewarded by the
    accuracy reward; a completion that stops its chain early but answers wrong no longer looks all right."""
    module = _module(tiny_backbone, supervision="process", group_size=2, answer_step=True)
    roll = _roll(tokenizer, ["<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>",
                             "<think> 12 plus 7 is 19. </think> <answer> 19 </answer>",  # stops early
                             "<answer> 14 </answer>",  # no steps: the reward-0 step, then the answer
                             "<think> 12 plus 7 is 18. 18 minus 5 is 13. </think> <answer> 13 </answer>"])
    steps = module.step_scores(roll)
    assert steps["rewards"].tolist() == [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert steps["mask"].tolist() == [[True] * 3, [True, True, False], [True, True, False], [True] * 3]
    lengths = (roll["completion_mask"].sum(-1) - 1).tolist()
    assert [steps["ends"][i, int(steps["mask"][i].sum()) - 1].item() for i in range(4)] == lengths
    _, log = module.apply_supervision(roll, torch.zeros(4))
    assert log["train/all_steps_correct"].item() == pytest.approx(0.25)  # the early stop's answer is wrong
    roll.pop("steps")
    roll["per_function"] = {"accuracy": torch.tensor([0.0, 1.0, 0.0, 1.0])}  # the rollout's own scores win
    assert module.step_scores(roll)["rewards"][:, -1].tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="module.answer_step: adds the answer to the steps of process supervision"):
        _module(tiny_backbone, answer_step=True)


class Raising:
    def score_steps(self, *args):
        raise AssertionError("outcome supervision must not score steps")


def test_outcome_supervision_is_unchanged(tiny_backbone, tokenizer, monkeypatch):
    seen = []
    real_loss = grpo_mod.grpo_loss

    def loss(logp, old_logp, advantages, *args, **kwargs):
        seen.append(advantages.clone())
        return real_loss(logp, old_logp, advantages, *args, **kwargs)

    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)
    weights, advantages = [], []
    for kw in ({}, {"supervision": "outcome", "step_rewards": Raising()}):
        torch.manual_seed(0)
        module = _module(tiny_backbone, **kw)
        _fit(module, _data(tokenizer), steps=1)
        weights.append(module.policy.state_dict())
        advantages.append(seen.pop())
    assert advantages[0].dim() == 1 and torch.equal(advantages[0], advantages[1])
    assert advantages[0].abs().sum() > 0
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name


class DigitSteps:
    """A step reward a random policy can climb: the share of digits in each step."""

    def score_steps(self, prompts, completions, references, spans):
        return [[digit_share("", c[a:b], {}) for a, b in s] for c, s in zip(completions, spans)]


def test_a_process_step_raises_the_likelihood_of_tokens_with_higher_advantage(tiny_backbone, tokenizer, monkeypatch):
    rolls = []
    real = GRPO.rollout

    def rollout(self, batch):
        rolls.append(real(self, batch))
        return rolls[-1]

    monkeypatch.setattr(GRPO, "rollout", rollout)
    torch.manual_seed(0)
    module = _module(tiny_backbone, supervision="process", step_rule=r"\S{1,3}", step_rewards=DigitSteps(), lr=1e-3)
    _fit(module, _data(tokenizer), steps=1)
    roll = rolls[0]
    advantages, _ = module.apply_supervision(roll, torch.zeros(len(roll["texts"])))
    with torch.no_grad():
        after = sequence_logprobs(module.policy, roll["prompt_ids"], roll["prompt_mask"], roll["completion_ids"],
                                  roll["completion_mask"])
    on = roll["completion_mask"].bool() & (advantages != 0)
    delta = (after - roll["old_logp"])[on]
    assert on.sum() > 50
    assert torch.corrcoef(torch.stack([delta, advantages[on]]))[0, 1] > 0.3


def test_a_short_process_supervised_run_raises_the_step_reward(tiny_backbone, tokenizer):
    torch.manual_seed(0)
    module = _module(tiny_backbone, supervision="process", step_rule=r"\S{1,3}", step_rewards=DigitSteps(),
                     lr=1e-2, group_size=8)
    step_rewards = []
    real = GRPO.apply_supervision

    def compute(self, roll, outcome):
        advantages, log = real(self, roll, outcome)
        step_rewards.append(log["train/step_reward"].item())
        return advantages, log

    GRPO.apply_supervision = compute
    try:
        _fit(module, _data(tokenizer, prompts_per_step=4), steps=20)
    finally:
        GRPO.apply_supervision = real
    first, last = sum(step_rewards[:3]) / 3, sum(step_rewards[-3:]) / 3
    assert first < 0.1 and last > 0.5, (first, last)  # measured: 0.02 -> 0.96


@pytest.mark.parametrize(("override", "message"), [
    ({"supervision": "steps"}, "module.supervision: 'steps' is not one of outcome, process, both"),
    ({"step_rule": "(["}, "module.step_rule: step rule"),
    ({"step_rewards": "rule"}, "module.step_rewards: 'rule' has no score_steps"),
])
def test_bad_process_settings_name_the_key(tiny_backbone, override, message):
    with pytest.raises(ValueError, match=message):
        _module(tiny_backbone, **override)


def test_the_grpo_config_defaults_to_outcome_supervision(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("stage=grpo", "backbone=tiny", "backbone.name_or_path=null")
    assert cfg.module.supervision == "outcome" and cfg.module.step_rule == "sentence"
    module = instantiate(cfg.module, backbone=instantiate(cfg.backbone))
    assert module.supervision == "outcome" and type(module.step_rewards).__name__ == "RuleStepReward"
