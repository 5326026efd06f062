"""PPO's GAE and value loss, RLOO and REINFORCE++ against values computed by hand."""

import math

import pytest
import torch

from r1lab.rl import (
    discounted_returns,
    explained_variance,
    gae,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
    value_loss,
    whiten,
)


def test_token_rewards_put_the_outcome_on_the_last_token_and_the_kl_on_every_token():
    outcome = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 5.0], [0.0, 0.1, 0.3], [1.0, 1.0, 1.0]])
    got = token_rewards(outcome, mask, kl, beta=0.5)
    want = torch.tensor([[-0.05, 1 - 0.1, 0.0], [0.0, -0.05, 2 - 0.15], [0.0, 0.0, 0.0]])
    assert torch.allclose(got, want)
    assert torch.equal(token_rewards(outcome, mask), torch.tensor([[0.0, 1, 0], [0, 0, 2], [0, 0, 0]]))


def test_gae_against_a_hand_computed_example_with_an_early_eos_and_padding():
    # row 0 ends after 3 tokens (EOS), its 4th value is padding and must not leak in
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0], [0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ2 = 1 − 0.4 = 0.6; δ1 = 0.9·0.4 − 0.2 = 0.16; δ0 = 0.9·0.2 − 0.5 = −0.32; γλ = 0.45
    a2, a1 = 0.6, 0.16 + 0.45 * 0.6
    a0 = -0.32 + 0.45 * a1
    # row 1: δ3 = −0.4; δ2 = 0.9·0.4 − 0.3; δ1 = 0.9·0.3 − 0.2; δ0 = 0.9·0.2 − 0.1
    b3 = -0.4
    b2 = 0.06 + 0.45 * b3
    b1 = 0.07 + 0.45 * b2
    b0 = 0.08 + 0.45 * b1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0], [b0, b1, b2, b3]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0],
                                             [b0 + 0.1, b1 + 0.2, b2 + 0.3, b3 + 0.4]]), atol=1e-6)


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_the_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.8, lam=1.0)
    mc = discounted_returns(rewards, mask, gamma=0.8)
    assert torch.allclose(ret, mc, atol=1e-5)
    assert torch.allclose(adv, (mc - values) * mask, atol=1e-5)


def test_rloo_leave_one_out_baseline_and_constant_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = rloo_advantages(rewards, group_size=4)
    # r = 1: baseline (0 + 0 + 1) / 3 = 1/3 -> 2/3; r = 0: baseline 2/3 -> −2/3; equal rewards: 0
    assert torch.allclose(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))
    assert torch.equal(rloo_advantages(torch.full((6,), 0.1), 3), torch.zeros(6))  # exactly 0, never NaN
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(rewards, 1)


def test_reinforce_pp_normalises_returns_over_the_batch():
    rewards = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = reinforce_pp_advantages(rewards, mask)
    # returns on the mask: 1, 1, 0.5; mean 5/6, sample std sqrt(1/12)
    std = math.sqrt(1 / 12)
    want = torch.tensor([[(1 - 5 / 6) / std, (1 - 5 / 6) / std], [(0.5 - 5 / 6) / std, 0.0]])
    assert torch.allclose(adv, want, atol=1e-5)
    # equal returns everywhere: no signal, zeros, never NaN
    assert torch.equal(reinforce_pp_advantages(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.ones(2, 2)),
                       torch.zeros(2, 2))


def test_whiten_with_totals_of_a_larger_batch():
    x, mask = torch.tensor([[1.0, 3.0]]), torch.ones(1, 2)
    everything = torch.tensor([1.0, 3.0, 5.0, 7.0])  # this device's entries and another's
    total = (torch.tensor(4.0), everything.sum(), (everything**2).sum())
    got = whiten(x, mask, total)
    assert torch.allclose(got, (x - everything.mean()) / everything.std(), atol=1e-5)


def test_value_loss_clips_how_far_the_value_moves():
    values = torch.tensor([[1.5, 0.9]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0]])
    returns = torch.tensor([[2.0, 0.0]])
    loss, clipped = value_loss(values, old, returns, clip=0.2)
    # token 0: unclipped (1.5 − 2)² = 0.25, clipped V = 1.2 -> 0.64 (the larger): ½·0.64
    # token 1: V = 0.9 is inside the clip: ½·0.81
    assert torch.allclose(loss, torch.tensor([[0.32, 0.405]]))
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    assert values.grad[0, 0] == 0  # the clipped branch is constant in V: no gradient
    assert torch.isclose(values.grad[0, 1], torch.tensor(0.9))
    plain, _ = value_loss(values.detach(), old, returns, clip=None)
    assert torch.allclose(plain, torch.tensor([[0.125, 0.405]]))


def test_explained_variance_is_one_for_perfect_values_and_zero_for_a_constant():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.isclose(explained_variance(returns, returns, mask), torch.tensor(1.0))
    assert torch.isclose(explained_variance(torch.full_like(returns, 2.0), returns, mask), torch.tensor(0.0), atol=1e-6)
