"""DAPO's dynamic sampling in GRPO: constant groups dropped, the batch still full, the cap kept, and
the update unchanged when no group is constant."""

import pytest
import torch

from r1lab.modules import grpo as grpo_mod
from r1lab.modules.grpo import GRPO
from r1lab.rewards import RewardSet
from r1lab.rl.dynamic import concat_rollouts, informative_groups, select_groups
from test_grpo import _data, _fit, _module, digit_share


def test_select_groups_keeps_the_first_informative_and_fills_with_constant_ones():
    assert select_groups([True, False, True, True, False], 2) == ([0, 2], 2)
    assert select_groups([False, True, False, False], 3) == ([0, 1, 2], 1)  # filled with the earliest constant
    adv = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0])
    assert informative_groups(adv, 2).tolist() == [False, True, False]
    per_token = torch.zeros(4, 3)
    per_token[3, 1] = 0.5
    assert informative_groups(per_token, 2).tolist() == [False, True]


def test_concat_rollouts_pads_prompts_left_and_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[7]]), "texts": ["x"], "ref_logp": None, "truncated": torch.tensor([True]),
         "steps": {"mask": torch.tensor([[True]])}}
    b = {"prompt_ids": torch.tensor([[4, 5, 6]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[8, 9]]), "texts": ["y"], "ref_logp": None, "truncated": torch.tensor([False]),
         "steps": {"mask": torch.tensor([[True, True]])}}
    roll = concat_rollouts([a, b], pad_id=0)
    assert roll["prompt_ids"].tolist() == [[0, 5, 6], [4, 5, 6]]
    assert roll["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert roll["completion_ids"].tolist() == [[7, 0], [8, 9]] and roll["texts"] == ["x", "y"]
    assert roll["steps"]["mask"].tolist() == [[True, False], [True, True]] and roll["ref_logp"] is None
    assert roll["truncated"].tolist() == [True, False]


def odd_answers_constant(prompt, completion, reference):
    """Digit share for prompts with an even answer; 0 for every completion of an odd one (a constant group)."""
    return digit_share(prompt, completion, reference) if int(reference["answer"]) % 2 == 0 else 0.0


@pytest.fixture
def recorded(monkeypatch):
    calls = {"losses": [], "logs": []}
    real_loss, real_log = grpo_mod.grpo_loss, GRPO.log_dict

    def loss(logp, old_logp, advantages, *args, **kwargs):
        calls["losses"].append((advantages.clone(), kwargs["num_sequences"]))
        return real_loss(logp, old_logp, advantages, *args, **kwargs)

    def log_dict(self, values, **kwargs):
        calls["logs"].append({k: float(v) for k, v in values.items()})
        return real_log(self, values, **kwargs)

    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)
    monkeypatch.setattr(GRPO, "log_dict", log_dict)
    return calls


def _dynamic(backbone, **kw):
    return _module(backbone, rewards=RewardSet(functions={"r": odd_answers_constant}), **kw)


def test_constant_groups_are_dropped_and_the_batch_is_still_full(tiny_backbone, tokenizer, recorded):
    torch.manual_seed(0)
    module = _dynamic(tiny_backbone, dynamic_sampling=True, dynamic_sampling_prompts=4)
    _fit(module, _data(tokenizer, prompts_per_step=16), steps=3)
    for (advantages, num_sequences), log in zip(recorded["losses"], recorded["logs"]):
        assert advantages.shape == (16,) and num_sequences == 16  # 4 groups x G 4, every step
        assert informative_groups(advantages, 4).all()  # no group without a spread was trained on
        assert log["train/zero_std_groups"] == 0.0 and log["train/dynamic_fill_rate"] == 1.0
        assert log["train/extra_rollouts"] > 0  # some odd answers came first: more prompts were sampled
    # the running total of sampled completions: the trained 16 and the extra ones, every step
    drawn, total = [], 0.0
    for log in recorded["logs"]:
        total += 16 + float(log["train/extra_rollouts"])
        drawn.append(total)
    assert [float(log["train/completions_sampled"]) for log in recorded["logs"]] == pytest.approx(drawn)
    assert module.completions_sampled == pytest.approx(total) and module.train_seconds > 0
    # without dynamic sampling the same kind of batches hold constant groups
    recorded["losses"].clear(), recorded["logs"].clear()
    torch.manual_seed(0)
    _fit(_dynamic(tiny_backbone), _data(tokenizer, prompts_per_step=4), steps=3)
    assert max(log["train/zero_std_groups"] for log in recorded["logs"]) > 0


def test_the_cap_on_extra_rollouts_is_respected(tiny_backbone, tokenizer, recorded):
    torch.manual_seed(0)
    module = _dynamic(tiny_backbone, dynamic_sampling=True, dynamic_sampling_prompts=4,
                      dynamic_sampling_max_rollouts=4)  # one extra prompt's group at most
    _fit(module, _data(tokenizer, prompts_per_step=16), steps=3)
    logs = recorded["logs"]
    assert all(log["train/extra_rollouts"] <= 4 for log in logs)
    assert all(n == 16 for _, n in recorded["losses"])  # still full: filled with constant groups
    assert min(log["train/dynamic_fill_rate"] for log in logs) < 1.0  # the cap left constant groups in


def digits_and_length(prompt, completion, reference):
    """No group of random completions has a constant reward: their lengths in characters differ."""
    return digit_share(prompt, completion, reference) + 1e-3 * len(completion)


def test_the_update_is_unchanged_when_no_group_is_constant(tiny_backbone, tokenizer, recorded):
    weights = []
    for kw, pool in (({}, 4), ({"dynamic_sampling": True, "dynamic_sampling_prompts": 4}, 8)):
        torch.manual_seed(0)
        module = _module(tiny_backbone, rewards=RewardSet(functions={"r": digits_and_length}), **kw)
        _fit(module, _data(tokenizer, prompts_per_step=pool), steps=1)
        weights.append(module.policy.state_dict())
    (adv_off, _), (adv_on, _) = recorded["losses"]
    assert informative_groups(adv_off, 4).all()
    torch.testing.assert_close(adv_on, adv_off)  # the pool's first 4 prompts, sampled with the same seed
    assert recorded["logs"][1]["train/extra_rollouts"] == 0.0
    for name, w in weights[0].items():
        torch.testing.assert_close(w, weights[1][name], atol=1e-6, rtol=1e-5)


def test_bad_dynamic_sampling_settings_name_the_key(tiny_backbone, tokenizer):
    with pytest.raises(ValueError, match=r"module.dynamic_sampling_prompts: must be an integer in \[1, inf\]"):
        _module(tiny_backbone, dynamic_sampling=True, dynamic_sampling_prompts=0)
    with pytest.raises(ValueError, match="module.dynamic_sampling_max_rollouts"):
        _module(tiny_backbone, dynamic_sampling_max_rollouts=-1)
    with pytest.raises(ValueError, match="module.dynamic_sampling: must be true or false"):
        _module(tiny_backbone, dynamic_sampling="yes")
    module = _module(tiny_backbone, dynamic_sampling=True, dynamic_sampling_prompts=8)
    with pytest.raises(ValueError, match="module.dynamic_sampling_prompts=8 exceeds the 4 prompts"):
        _fit(module, _data(tokenizer, prompts_per_step=4), steps=1)
