"""Token-level distillation losses against hand computations on a 3-token vocabulary."""

import math

import pytest
import torch
import torch.nn.functional as F

from r1lab.kd import distill_objective, kd_loss

P_T = [0.5, 0.3, 0.2]  # teacher
P_S = [0.25, 0.25, 0.5]  # student
# KL(P_T‖P_S) = 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.4 = 0.346574 + 0.054696 − 0.183258 = 0.218012
FORWARD = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
# KL(P_S‖P_T) = 0.25 ln 0.5 + 0.25 ln(0.25/0.3) + 0.5 ln 2.5 = −0.173287 − 0.045580 + 0.458145 = 0.239278
REVERSE = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2)
# β = 0.5: M = [0.375, 0.275, 0.35]
# KL(P_T‖M) = 0.5 ln(0.5/0.375) + 0.3 ln(0.3/0.275) + 0.2 ln(0.2/0.35) = 0.143841 + 0.026103 − 0.111923
# KL(P_S‖M) = 0.25 ln(0.25/0.375) + 0.25 ln(0.25/0.275) + 0.5 ln(0.5/0.35) = −0.101366 − 0.023828 + 0.178337
# JSD_0.5 = 0.5 · 0.058021 + 0.5 · 0.053143 = 0.055582
JSD_HALF = 0.5 * (
    0.5 * math.log(0.5 / 0.375) + 0.3 * math.log(0.3 / 0.275) + 0.2 * math.log(0.2 / 0.35)
) + 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.275) + 0.5 * math.log(0.5 / 0.35))


def logits_for(probs, temperature=1.0):
    """Logits z with softmax(z/τ) = probs: z = τ·ln p. Shape (1, 1, V)."""
    return (temperature * torch.log(torch.tensor(probs))).view(1, 1, -1)


ONE = torch.ones(1, 1)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_each_loss_against_hand_values(tau):
    s, t = logits_for(P_S, tau), logits_for(P_T, tau)
    assert kd_loss(s, t, ONE, kind="forward_kl", temperature=tau).item() == pytest.approx(FORWARD, abs=1e-6)
    assert kd_loss(s, t, ONE, kind="reverse_kl", temperature=tau).item() == pytest.approx(REVERSE, abs=1e-6)
    jsd = kd_loss(s, t, ONE, kind="jsd", beta=0.5, temperature=tau).item()
    assert jsd == pytest.approx(JSD_HALF, abs=1e-6)
    # the end points (GKD convention): β = 0 is the forward KL, β = 1 the reverse KL
    beta0 = kd_loss(s, t, ONE, kind="jsd", beta=0.0, temperature=tau).item()
    beta1 = kd_loss(s, t, ONE, kind="jsd", beta=1.0, temperature=tau).item()
    assert beta0 == pytest.approx(FORWARD, abs=1e-6) and beta1 == pytest.approx(REVERSE, abs=1e-6)


def test_temperature_changes_the_distributions():
    # logits 2·ln p at τ = 1: softmax ∝ p², P_T = [0.25, 0.09, 0.04]/0.38, P_S = [0.0625, 0.0625, 0.25]/0.375
    pt = [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]
    ps = [0.0625 / 0.375, 0.0625 / 0.375, 0.25 / 0.375]
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))  # = 0.792250
    got = kd_loss(logits_for(P_S, 2.0), logits_for(P_T, 2.0), ONE, kind="forward_kl", temperature=1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_jsd_tends_to_the_kls_at_its_ends():
    # JSD_β / β → KL(P_T‖P_S) as β → 0 and JSD_β / (1 − β) → KL(P_S‖P_T) as β → 1: the convention's reason
    s, t = logits_for(P_S).double(), logits_for(P_T).double()
    small = kd_loss(s, t, ONE, kind="jsd", beta=1e-3).item()
    large = kd_loss(s, t, ONE, kind="jsd", beta=1 - 1e-3).item()
    assert small / 1e-3 == pytest.approx(FORWARD, rel=0.02)
    assert large / 1e-3 == pytest.approx(REVERSE, rel=0.02)


def test_zero_when_student_equals_teacher():
    z = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0)) * 3
    mask = torch.ones(2, 5)
    for kind, beta in (("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.0), ("jsd", 0.3), ("jsd", 1.0)):
        for tau in (1.0, 2.0):
            assert abs(kd_loss(z, z.clone(), mask, kind=kind, beta=beta, temperature=tau).item()) < 1e-6


def test_masked_token_mean():
    # position 0 is the hand example (forward KL 0.218012); position 1 has other logits but mask 0
    s = torch.cat([logits_for(P_S), torch.tensor([[[5.0, -5.0, 0.0]]])], dim=1)  # (1, 2, 3)
    t = torch.cat([logits_for(P_T), torch.tensor([[[-5.0, 5.0, 0.0]]])], dim=1)
    assert kd_loss(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(FORWARD, abs=1e-6)
    # both positions: mean of the two
    other = kd_loss(s[:, 1:], t[:, 1:], ONE).item()
    assert kd_loss(s, t, torch.ones(1, 2)).item() == pytest.approx((FORWARD + other) / 2, abs=1e-6)


def test_top_k():
    # top-2 of the teacher: ids 0, 1 → P_T' = [0.625, 0.375], P_S' = [0.5, 0.5]
    # KL = 0.625 ln 1.25 + 0.375 ln 0.75 = 0.139464 − 0.107881 = 0.031584
    expected = 0.625 * math.log(1.25) + 0.375 * math.log(0.75)
    got = kd_loss(logits_for(P_S), logits_for(P_T), ONE, top_k=2).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # k = V is exact
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 7, generator=gen), torch.randn(2, 4, 7, generator=gen)
    mask = torch.ones(2, 4)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        full = kd_loss(s, t, mask, kind=kind, temperature=1.5).item()
        top = kd_loss(s, t, mask, kind=kind, temperature=1.5, top_k=7).item()
        assert top == pytest.approx(full, abs=1e-6)


def test_gradients_reach_the_student_only():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 5, generator=gen).requires_grad_(True)
    t = torch.randn(2, 3, 5, generator=gen).requires_grad_(True)
    labels = torch.tensor([[1, 4, -100], [-100, 0, 2]])
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        loss, _ = distill_objective(s, t, labels, alpha=0.3, temperature=2.0, kind=kind)
        loss.backward()
        assert t.grad is None
        assert s.grad.abs().sum() > 0
        s.grad = None


def test_distill_objective_hand_value():
    # position 0: label 0, student logits 2 ln P_S, teacher 2 ln P_T; position 1 ignored (−100)
    s = torch.cat([logits_for(P_S, 2.0), torch.tensor([[[9.0, -9.0, 0.0]]])], dim=1)  # (1, 2, 3)
    t = torch.cat([logits_for(P_T, 2.0), torch.tensor([[[-9.0, 9.0, 0.0]]])], dim=1)
    labels = torch.tensor([[0, -100]])
    # CE at τ = 1: softmax(2 ln P_S) = [0.0625, 0.0625, 0.25]/0.375 → p(0) = 1/6 → CE = ln 6 = 1.791759
    # KD at τ = 2 = KL(P_T‖P_S) = 0.218012; loss = 0.5·1.791759 + 0.5·4·0.218012 = 1.331904
    loss, m = distill_objective(s, t, labels, alpha=0.5, temperature=2.0, kind="forward_kl")
    assert m["ce"].item() == pytest.approx(math.log(6), abs=1e-6)
    assert m["kd"].item() == pytest.approx(FORWARD, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * math.log(6) + 0.5 * 4 * FORWARD, abs=1e-6)


def test_alpha_one_is_plain_cross_entropy():
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)
    labels = torch.randint(0, 6, (3, 4), generator=gen)
    labels[0, :2] = -100
    loss, _ = distill_objective(s, t, labels, alpha=1.0, temperature=2.0)
    ce = F.cross_entropy(s.view(-1, 6), labels.view(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(ce.item(), abs=1e-6)
    # no response tokens at all: 0, not NaN
    empty, _ = distill_objective(s, t, torch.full((3, 4), -100), alpha=0.5)
    assert empty.item() == 0.0


def test_rejects_unknown_kind_and_beta():
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd"):
        kd_loss(logits_for(P_S), logits_for(P_T), ONE, kind="tvd")
    with pytest.raises(ValueError, match="beta"):
        kd_loss(logits_for(P_S), logits_for(P_T), ONE, kind="jsd", beta=1.5)
