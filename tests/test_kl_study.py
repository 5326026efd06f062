"""The KL-estimator study reproduces Schulman's table and the gradient derivation."""

import math

import pytest
import torch

from r1lab.bench.kl_study import (
    PUBLISHED,
    categorical_estimators,
    format_table,
    gaussian_table,
    gradient_bias_table,
    main,
)

N = 1_000_000  # ~0.2 s; k1's bias/true at μ = 0.1 has standard error 20/√N = 0.02


def test_gaussian_table_reproduces_schulman():
    rows = {(r["mu"], r["estimator"]): r for r in gaussian_table(N, seed=0)}
    assert len(rows) == 6
    for (mu, kind), (pub_bias, pub_stdev) in PUBLISHED.items():
        row = rows[(mu, kind)]
        assert row["true_kl"] == pytest.approx(mu**2 / 2)
        # bias/true within 4 standard errors; + 0.0005 for the note's rounding (k2 at μ = 0.1: 0.0025 → 0.002)
        assert abs(row["bias_over_true"] - pub_bias) <= 4 * row["bias_se"] + 5e-4, (mu, kind)
        # stdev/true within 4 standard errors (delta method) + 0.5% for rounding (k3 at μ = 1: 1.695 → 1.7)
        assert abs(row["stdev_over_true"] - pub_stdev) <= 4 * row["stdev_se"] + 0.005 * pub_stdev, (mu, kind)


def test_gaussian_table_matches_closed_forms():
    # log r = μx − μ²/2 ~ N(−μ²/2, μ²) for x ~ N(0,1), true KL μ²/2:
    #   k1: stdev μ → /true = 2/μ            (20, 2)
    #   k2: E = μ²/2 + μ⁴/8 → bias/true μ²/4 (0.0025, 0.25);
    #       Var(y²/2) = (2μ⁴ + μ⁶)/4 → stdev/true √(2 + μ²) (1.4177, 1.7321)
    #   k3: Var = e^{μ²} − 1 − μ² → √(e^{μ²} − 1 − μ²)/(μ²/2)  (1.4166, 1.6951)
    exact = {}
    for mu in (0.1, 1.0):
        exact[(mu, "k1")] = (0.0, 2 / mu)
        exact[(mu, "k2")] = (mu**2 / 4, math.sqrt(2 + mu**2))
        exact[(mu, "k3")] = (0.0, math.sqrt(math.exp(mu**2) - 1 - mu**2) / (mu**2 / 2))
    for row in gaussian_table(N, seed=1):
        bias, stdev = exact[(row["mu"], row["estimator"])]
        assert abs(row["bias_over_true"] - bias) <= 4 * row["bias_se"]
        assert abs(row["stdev_over_true"] - stdev) <= 4 * row["stdev_se"]


def test_gradient_bias_derivation():
    # at fixed samples, E[∇k1] = 0, E[∇k2] = ∇KL(q‖p), E[∇k3] = ∇KL(p‖q)
    # loc: ∇KL(q‖p) = ∇KL(p‖q) = −μ ; log-scale: ∇KL(q‖p) = 0, ∇KL(p‖q) = −μ²
    rows = gradient_bias_table(N, seed=0)
    assert len(rows) == 12
    for r in rows:
        se = 4 * r["grad_in_loss_se"]
        assert r["grad_kl_qp"] == pytest.approx({"loc": -r["mu"], "log_scale": 0.0}[r["param"]])
        assert r["grad_kl_pq"] == pytest.approx({"loc": -r["mu"], "log_scale": -r["mu"] ** 2}[r["param"]])
        if r["estimator"] == "k1":
            assert abs(r["grad_in_loss"]) <= se
        elif r["estimator"] == "k2":
            assert abs(r["grad_in_loss"] - r["grad_kl_qp"]) <= se
        else:
            assert abs(r["grad_in_loss"] - r["grad_kl_pq"]) <= se
    # the two directions are told apart by the log-scale at μ = 1: k3 is biased for KL(q‖p) by −1
    k3 = next(r for r in rows if (r["mu"], r["param"], r["estimator"]) == (1.0, "log_scale", "k3"))
    assert k3["bias_in_loss"] == pytest.approx(-1.0, abs=0.05)
    # k1 as a REINFORCE reward recovers the true gradient: E[k1·s] = ∇KL(q‖p) = −1 at μ = 1 (loc)
    k1 = next(r for r in rows if (r["mu"], r["param"], r["estimator"]) == (1.0, "loc", "k1"))
    assert k1["grad_as_reward"] == pytest.approx(-1.0, abs=0.02)


def test_categorical_estimators_on_hand_made_distributions():
    policy = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]]))  # (N=2, V=3)
    ref = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]]))
    # KL₀ = 0.5 ln 2.5 + 0.3 ln 1 + 0.2 ln 0.4 = 0.3 ln 2.5 = 0.274887
    # KL₁ = 0.25 ln 0.5 + 0.25 ln(0.25/0.3) + 0.5 ln 2.5 = 0.239278 ; mean 0.257083
    kl0 = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(1.0) + 0.2 * math.log(0.2 / 0.5)
    kl1 = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2)
    rows = {r["estimator"]: r for r in categorical_estimators(policy, ref, n_samples=20_000, seed=0)}
    for kind in ("k1", "k2", "k3"):
        assert rows[kind]["true_kl"] == pytest.approx((kl0 + kl1) / 2, abs=1e-6)
    for kind in ("k1", "k3"):  # unbiased values
        assert abs(rows[kind]["bias_over_true"]) <= 4 * rows[kind]["bias_se"]
    assert rows["k2"]["bias_over_true"] > 4 * rows["k2"]["bias_se"]  # k2 is biased
    assert rows["k1"]["stdev_over_true"] > rows["k3"]["stdev_over_true"]
    # gradients w.r.t. the policy logits, exact expectation over the sampled token:
    # k1 → 0 (relative error exactly 1), k2 → ∇KL(π‖π_ref), k3 → ∇KL(π_ref‖π)
    assert rows["k1"]["grad_err_kl_fwd"] == pytest.approx(1.0, abs=1e-9)
    assert rows["k2"]["grad_err_kl_fwd"] < 1e-9
    assert rows["k3"]["grad_err_kl_rev"] < 1e-9
    assert rows["k3"]["grad_err_kl_fwd"] > 0.05  # the directions differ for these distributions
    assert all(r["grad_noise_mc"] < 0.05 for r in rows.values())  # the Monte Carlo mean agrees


def test_format_table():
    text = format_table([{"estimator": "k1", "bias": 0.123456}, {"estimator": "k3", "bias": -2.0, "x": 1}])
    assert text.splitlines() == [
        "| estimator | bias | x |",
        "|---|---|---|",
        "| k1 | 0.1235 |  |",
        "| k3 | -2 | 1 |",
    ]


def test_main_writes_table_and_png(tmp_path):
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 8, generator=gen)  # (B, T, V): flattened to 6 positions
    torch.save(ref + 0.5 * torch.randn(2, 3, 8, generator=gen), tmp_path / "policy.pt")
    torch.save(ref, tmp_path / "ref.pt")
    out = tmp_path / "study"
    tables = main([
        "--samples", "20000", "--token-samples", "200", "--out", str(out),
        "--policy-logits", str(tmp_path / "policy.pt"), "--ref-logits", str(tmp_path / "ref.pt"),
    ])
    assert [len(tables[k]) for k in ("gaussian", "gradient", "categorical")] == [6, 12, 3]
    text = (out / "table.md").read_text()
    assert "q = N(0,1), p = N(mu,1)" in text and "policy‖ref, 6 positions" in text
    assert text.count("| k3 |") == 2 + 4 + 1
    assert (out / "kl_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
