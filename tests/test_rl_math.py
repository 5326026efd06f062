"""GRPO math against numbers computed by hand: KL estimators, advantages, surrogate, aggregation."""

import math

import pytest
import torch

from r1lab.rl import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_estimate,
)
from r1lab.rl.advantages import process_advantages
from r1lab.tensors import masked_mean, positions_from_mask

E = math.e


# ---------------------------------------------------------------- KL estimators (Schulman 2020)


@pytest.mark.parametrize(
    "logp, ref, k1, k2, k3",
    [
        # log r = ref − logp = −1: k1 = 1, k2 = ½·1 = 0.5, k3 = e^{−1} − (−1) − 1 = 0.367879
        (-1.0, -2.0, 1.0, 0.5, math.exp(-1)),
        # log r = +1: k1 = −1 (negative!), k2 = 0.5, k3 = e − 1 − 1 = 0.718282
        (-2.0, -1.0, -1.0, 0.5, E - 2),
        # log r = −0.1: k1 = 0.1, k2 = 0.005, k3 = e^{−0.1} + 0.1 − 1 = 0.0048374
        (-0.3, -0.4, 0.1, 0.005, math.exp(-0.1) - 0.9),
        # identical policies: every estimate is exactly 0
        (-0.7, -0.7, 0.0, 0.0, 0.0),
    ],
)
def test_kl_estimators_hand_values(logp, ref, k1, k2, k3):
    lp, rp = torch.tensor([logp], dtype=torch.float64), torch.tensor([ref], dtype=torch.float64)
    for kind, expected in (("k1", k1), ("k2", k2), ("k3", k3)):
        assert kl_estimate(lp, rp, kind).item() == pytest.approx(expected, abs=1e-12)


def test_kl_estimate_keeps_shape_and_rejects_unknown_kind():
    assert kl_estimate(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), "k3").shape == (2, 3, 4)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- advantages


REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_group_advantages_grpo_hand_example():
    # group 1: mean 0.5, deviations ±0.5, unbiased var = 4·0.25/3 = 1/3, std = 0.577350
    # Â = ±0.5 / (0.577350 + 1e-4) = ±0.865875 ; group 2 all equal → exactly 0
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    adv = group_advantages(REWARDS, group_size=4)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[4:].eq(0).all()


def test_group_advantages_batch_and_none_variants():
    # batch: mean 0.75, deviations 0.25 (×6) and −0.75 (×2): Σ² = 0.375 + 1.125 = 1.5,
    # unbiased var = 1.5/7 = 0.214286, std = 0.462910; Â = ±0.5/(0.462910 + 1e-4) = ±1.079898
    b = 0.5 / (math.sqrt(1.5 / 7) + 1e-4)
    batch = group_advantages(REWARDS, 4, scale="batch")
    assert torch.allclose(batch, torch.tensor([b, -b, -b, b, 0, 0, 0, 0.0]), atol=1e-6)
    # none (Dr. GRPO): just r − group mean
    none = group_advantages(REWARDS, 4, scale="none")
    assert torch.equal(none, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0.0]))


def test_group_advantages_never_nan():
    # mean([0.1, 0.1, 0.1]) = 0.10000000000000002 in float64: still exactly 0
    for scale in ("group", "batch", "none"):
        adv = group_advantages(torch.full((6,), 0.1, dtype=torch.float64), 3, scale=scale)
        assert adv.eq(0).all()
        # G = 1: std undefined → 0, not NaN
        assert group_advantages(torch.tensor([1.0, 0.0, 3.0]), 1, scale=scale).eq(0).all()
    # integer rewards are accepted
    assert group_advantages(torch.tensor([1, 0]), 2, scale="none").tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.ones(7), 4)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.ones(4), 4, scale="rank")


def test_process_advantages_hand_example():
    # one group of 2 completions; completion 1 has one real step (its second is padding)
    # steps of the group: [1, 0.5, 0] → mean 0.5, unbiased var = (0.25 + 0 + 0.25)/2 = 0.25, std 0.5
    # normalised: [0.5/0.5001, 0, −0.5/0.5001] = [0.99980, 0, −0.99980]
    c = 0.5 / (0.5 + 1e-4)
    adv = process_advantages(
        torch.tensor([[1.0, 0.5], [0.0, 9.0]]),
        torch.tensor([[1, 3], [2, 0]]),
        group_size=2,
        seq_len=5,
        step_mask=torch.tensor([[True, True], [True, False]]),
    )
    # completion 0: steps end at tokens 1 (c) and 3 (0) → tokens 0–1: c + 0, 2–3: 0, 4: none → 0
    # completion 1: one step ends at token 2 (−c) → tokens 0–2: −c, 3–4: 0
    expected = torch.tensor([[c, c, 0, 0, 0], [-c, -c, -c, 0, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    # equal step rewards: no signal, exactly 0
    flat = process_advantages(torch.ones(2, 2), torch.tensor([[0, 1], [0, 1]]), 2, 3)
    assert flat.eq(0).all()


# ---------------------------------------------------------------- clipped surrogate


def _logp_for_ratio(ratios):
    # old_logp = 0, so ρ = exp(logp)
    return torch.log(torch.tensor(ratios, dtype=torch.float64)).requires_grad_(True)


def test_clipped_surrogate_hand_values_and_gradients():
    logp = _logp_for_ratio([[1.5, 0.5], [0.5, 1.5]])  # (B=2, T=2)
    old = torch.zeros(2, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)  # (B,)
    loss, stats = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.2)
    # Â=+1, ρ=1.5: min(1.5, 1.2) = 1.2 → −1.2 (clipped high)   Â=+1, ρ=0.5: min(0.5, 0.8) → −0.5
    # Â=−1, ρ=0.5: min(−0.5, −0.8) = −0.8 → 0.8 (clipped low)  Â=−1, ρ=1.5: min(−1.5, −1.2) → 1.5
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5], [0.8, 1.5]], dtype=torch.float64))
    assert stats["clipped_high"].tolist() == [[True, False], [False, False]]
    assert stats["clipped_low"].tolist() == [[False, False], [True, False]]
    assert torch.allclose(stats["ratio"], torch.tensor([[1.5, 0.5], [0.5, 1.5]], dtype=torch.float64))
    loss.sum().backward()
    # d(−ρÂ)/d logp = −ρÂ where unclipped, 0 where the clip is active: [[0, −0.5], [0, 1.5]]
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5], [0.0, 1.5]], dtype=torch.float64))


def test_clip_higher_dapo():
    logp = _logp_for_ratio([[1.25]])
    adv = torch.tensor([1.0], dtype=torch.float64)
    old = torch.zeros(1, 1, dtype=torch.float64)
    # symmetric ε = 0.2: ρ = 1.25 > 1.2 → clipped, −1.2
    loss, stats = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.2) and stats["clipped_high"].item()
    # DAPO ε_high = 0.28: 1.25 < 1.28 → unclipped, −1.25
    loss, stats = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25) and not stats["clipped_high"].item()


# ---------------------------------------------------------------- aggregation


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # third sequence: no tokens


def test_aggregation_modes_hand_values():
    # seq means: (1+2)/2 = 1.5, 4/1 = 4, empty → 0; Σ = 5.5 over 3 sequences = 1.833333
    assert aggregate(PER_TOKEN, MASK, "seq_mean_token_mean").item() == pytest.approx(5.5 / 3)
    # token mean: (1 + 2 + 4) / 3 tokens = 2.333333
    assert aggregate(PER_TOKEN, MASK, "token_mean").item() == pytest.approx(7 / 3)
    # Dr. GRPO: 7 / (3 sequences · max_len 4) = 0.583333
    assert aggregate(PER_TOKEN, MASK, "seq_sum_norm", max_len=4).item() == pytest.approx(7 / 12)
    # global counts given by the caller: 5.5/8, 7/20, 7/(8·4)
    counts = {"num_sequences": 8, "num_tokens": 20, "max_len": 4}
    assert aggregate(PER_TOKEN, MASK, "seq_mean_token_mean", **counts).item() == pytest.approx(5.5 / 8)
    assert aggregate(PER_TOKEN, MASK, "token_mean", **counts).item() == pytest.approx(7 / 20)
    assert aggregate(PER_TOKEN, MASK, "seq_sum_norm", **counts).item() == pytest.approx(7 / 32)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(PER_TOKEN, MASK, "sum")


def test_masked_mean_and_entropy():
    # masked mean: (1 + 2 + 4)/3; per row [1.5, 4, 0 (no tokens, not NaN)]
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(7 / 3)
    assert masked_mean(PER_TOKEN, MASK, dim=-1).tolist() == [1.5, 4.0, 0.0]
    # positions count the real tokens before each one: left padding shifts them, padding gets 0
    left, right = torch.tensor([[0, 0, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0, 0]])
    assert positions_from_mask(left).tolist() == [[0, 0, 0, 1, 2]]
    assert positions_from_mask(right).tolist() == [[0, 1, 2, 2, 2]]
    logits = torch.tensor([[
        [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4 = 1.386294
        [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf],  # 0.5 ln 2 + 0.5 ln 4 = 1.039721
        [1000.0, 1000.0, -1000.0, -1000.0],  # two equal huge logits: ln 2 = 0.693147, no overflow
    ]])  # (1, 3, 4)
    expected = torch.tensor([[math.log(4), 0.5 * math.log(2) + 0.5 * math.log(4), math.log(2)]])
    assert torch.allclose(entropy_from_logits(logits), expected, atol=1e-6)


# ---------------------------------------------------------------- grpo_loss


def test_grpo_loss_hand_values_and_metrics():
    logp = _logp_for_ratio([[1.5, 0.5], [0.5, 1.5]])
    old = torch.zeros(2, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2)
    ref = logp.detach() - 1.0  # log r = −1 everywhere → k3 = e^{−1} = 0.367879 per token
    loss, m = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1)
    # surrogate per sequence: (−1.2 − 0.5)/2 = −0.85 and (0.8 + 1.5)/2 = 1.15 → (−0.85 + 1.15)/2 = 0.15
    # loss = 0.15 + 0.1 · 0.367879 = 0.186788
    assert m["policy_loss"].item() == pytest.approx(0.15)
    assert loss.item() == pytest.approx(0.15 + 0.1 * math.exp(-1))
    assert m["kl"].item() == pytest.approx(math.exp(-1))
    # one token of four clipped each way; ratios (1.5 + 0.5 + 0.5 + 1.5)/4 = 1
    assert m["clip_frac_low"].item() == pytest.approx(0.25)
    assert m["clip_frac_high"].item() == pytest.approx(0.25)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert all(not v.requires_grad for v in m.values())
    # β = 0: no KL in the loss and the kl metric is 0 even when a reference is given
    loss0, m0 = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.0)
    assert loss0.item() == pytest.approx(0.15) and m0["kl"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)


def test_mu_one_gradient_identity():
    # μ = 1: old_logp = logp.detach(), so ρ = 1 in value; the loss is −Σ_i Â_i / G, yet
    # ∂loss/∂logp_{i,t} = −Â_i / |o_i| / G on the completion tokens (paper aggregation, β = 0)
    logp = (-torch.rand(3, 4, dtype=torch.float64)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])  # |o| = 4, 2, 1
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    loss, m = grpo_loss(logp, logp.detach(), adv, mask, num_sequences=3)
    # −(1 − 0.5 + 2)/3 = −0.833333
    assert loss.item() == pytest.approx(-2.5 / 3)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    loss.backward()
    # rows: −1/4/3 = −0.083333, +0.5/2/3 = 0.083333, −2/1/3 = −0.666667
    expected = torch.tensor([
        [-1 / 12, -1 / 12, -1 / 12, -1 / 12],
        [1 / 12, 1 / 12, 0, 0],
        [-2 / 3, 0, 0, 0],
    ], dtype=torch.float64)
    assert torch.allclose(logp.grad, expected)
    # old_logp=None means the same thing
    logp2 = logp.detach().clone().requires_grad_(True)
    grpo_loss(logp2, None, adv, mask, num_sequences=3)[0].backward()
    assert torch.allclose(logp2.grad, expected)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_sum_norm"])
def test_micro_batches_sum_to_the_full_batch(aggregation):
    gen = torch.Generator().manual_seed(0)
    b, t = 8, 7
    base = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3  # (B, T)
    old = base + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)  # some tokens clipped
    ref = base + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 0, 5, 1, 7, 2, 4])  # one sequence with no tokens
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # (B, T)
    kw = {
        "num_sequences": b, "num_tokens": int(mask.sum()), "max_len": 10,
        "beta": 0.05, "clip_low": 0.2, "clip_high": 0.28, "aggregation": aggregation,
    }

    full = base.clone().requires_grad_(True)
    loss_full, _ = grpo_loss(full, old, adv, mask, ref_logp=ref, **kw)
    loss_full.backward()

    micro = base.clone().requires_grad_(True)
    total = 0.0
    for rows in torch.arange(b).split(2):  # 4 micro-batches of 2 sequences, same global counts
        loss_i, _ = grpo_loss(micro[rows], old[rows], adv[rows], mask[rows], ref_logp=ref[rows], **kw)
        loss_i.backward()
        total = total + loss_i.detach()
    assert torch.allclose(total, loss_full.detach())
    assert torch.allclose(micro.grad, full.grad)
    assert full.grad.abs().sum() > 0

    if aggregation == "token_mean":  # the bug the global counts prevent: local token counts
        # (averaging micro-batch losses, each normalised by its own token count)
        local = [
            grpo_loss(base[r], old[r], adv[r], mask[r], ref_logp=ref[r], beta=0.05, aggregation=aggregation)
            for r in torch.arange(b).split(2)
        ]
        local = sum(loss_i for loss_i, _ in local) / 4
        assert not torch.allclose(local, loss_full.detach())
