"""Monte Carlo study of Schulman's KL estimators: values, and the gradients GRPO actually uses.

J. Schulman, "Approximating KL Divergence" (2020): to estimate KL[q‖p] from x ~ q, with
r = p(x)/q(x): k1 = −log r, k2 = ½(log r)², k3 = (r − 1) − log r. In GRPO (arXiv 2402.03300)
q = π_θ and p = π_ref; ``r1lab.rl.kl_estimate(logq, logp, kind)`` is the same function used here.

1. ``gaussian_table``: the note's table, q = N(0,1), p = N(μ,1), true KL μ²/2. Exact values, for
   checking: bias/true is 0 (k1), μ²/4 (k2), 0 (k3); stdev/true is 2/μ (k1), √(2 + μ²) (k2),
   √(e^{μ²} − 1 − μ²)/(μ²/2) (k3) → 20, 1.418, 1.417 at μ = 0.1 and 2, 1.732, 1.695 at μ = 1.

2. ``gradient_bias_table``: which gradient does each estimator give when it is put *in the loss*?
   GRPO differentiates k(x; θ) through log π_θ(x) at the fixed sampled tokens x: neither a
   reparameterisation (x is a token, it does not move with θ) nor a score-function term for the
   sampling distribution. That is what autograd gives, and it is what we compute (per sample, by
   autograd). With s = ∇_θ log q_θ(x) and E_q[s] = 0:

       ∇k1 = s                  → E = 0: unbiased value, useless gradient
       ∇k2 = (log q − log p) s  → E = ∇_θ KL(q_θ‖p)    (the REINFORCE gradient of the KL)
       ∇k3 = (1 − r) s          → E = −E_p[s] = ∇_θ KL(p‖q_θ)   (the *reverse* KL)

   For the location of equal-variance Gaussians both KL directions are μ²/2 and share the gradient
   θ − μ, so k3 looks unbiased there; the log-scale parameter separates them (∇ KL(q‖p) = 0,
   ∇ KL(p‖q) = −μ² at θ = 0). The table also shows "as reward": the gradient k·s you get when k
   (detached) is a per-token reward in REINFORCE, as PPO does: E[k1·s] = ∇KL(q‖p), unbiased —
   hence "k1 belongs in the reward, k2/k3 in the loss".

3. ``categorical_estimators``: the same statistics for real next-token distributions (a policy's
   and its reference model's logits), with the exact KL and exact gradients w.r.t. the logits.

Run ``python -m r1lab.bench.kl_study --out DIR`` for table.md and kl_study.png.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from r1lab.rl.kl import KL_ESTIMATORS, kl_estimate

PUBLISHED = {  # Schulman (2020): (mu, estimator) -> (bias/true, stdev/true)
    (0.1, "k1"): (0.0, 20.0), (0.1, "k2"): (0.002, 1.42), (0.1, "k3"): (0.0, 1.42),
    (1.0, "k1"): (0.0, 2.0), (1.0, "k2"): (0.25, 1.73), (1.0, "k3"): (0.0, 1.7),
}


def _normal_logpdf(x: Tensor, loc: Tensor | float, log_scale: Tensor | float = 0.0) -> Tensor:
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype)
    return -0.5 * ((x - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)


def gaussian_table(
    n_samples: int = 500_000, seed: int = 0, mus: tuple[float, ...] = (0.1, 1.0)
) -> list[dict]:
    """Bias/true and stdev/true of k1, k2, k3 for q = N(0,1) (sampled) and p = N(μ,1).

    Rows: case, mu, estimator, true_kl (μ²/2), bias_over_true, bias_se (its standard error),
    stdev_over_true (of a single-sample estimate), stdev_se (its standard error, delta method; k3's
    heavy right tail at large μ makes it the noisiest). Float64 throughout.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, generator=gen, dtype=torch.float64)  # (S,) x ~ q
    logq = _normal_logpdf(x, 0.0)  # (S,)
    rows = []
    for mu in mus:
        logp = _normal_logpdf(x, mu)  # (S,)
        true = mu**2 / 2
        for kind in KL_ESTIMATORS:
            k = kl_estimate(logq, logp, kind)  # (S,)
            std = k.std().item()
            m4 = ((k - k.mean()) ** 4).mean().item()
            # delta method: Var(s²) ≈ (m4 − s⁴)/S, se(s) ≈ √Var(s²) / (2s)
            stdev_se = math.sqrt(max(m4 - std**4, 0.0) / n_samples) / (2 * std) if std > 0 else 0.0
            rows.append({
                "case": f"q=N(0,1), p=N({mu:g},1)",
                "mu": mu,
                "estimator": kind,
                "true_kl": true,
                "bias_over_true": (k.mean().item() - true) / true,
                "bias_se": std / math.sqrt(n_samples) / true,
                "stdev_over_true": std / true,
                "stdev_se": stdev_se / true,
            })
    return rows


def _true_kl_grads(mu: float, param: str) -> tuple[float, float]:
    """(∇ KL(q_θ‖p), ∇ KL(p‖q_θ)) at θ = 0, q_θ = N(θ,1) ("loc") or N(0,e^{2θ}) ("log_scale")."""
    # KL(N(a,σ²)‖N(μ,1)) = −log σ + (σ² + (a−μ)²)/2 − ½ ;  KL(N(μ,1)‖N(a,σ²)) = log σ + (1 + (μ−a)²)/(2σ²) − ½
    if param == "loc":
        return -mu, -mu  # d/da: (a − μ) and −(μ − a)/σ², at a = 0, σ = 1
    return 0.0, -(mu**2)  # d/dlog σ: σ² − 1 and 1 − (1 + μ²)/σ², at σ = 1


def gradient_bias_table(
    n_samples: int = 500_000,
    seed: int = 0,
    mus: tuple[float, ...] = (0.1, 1.0),
    params: tuple[str, ...] = ("loc", "log_scale"),
) -> list[dict]:
    """Expected gradient of each estimator w.r.t. the sampler's parameter θ, at fixed samples.

    q_θ = N(θ, 1) ("loc") or N(0, e^{2θ}) ("log_scale"), evaluated at θ = 0 where x ~ N(0,1);
    p = N(μ, 1). ``grad_in_loss`` is the mean of ∇_θ k(x; θ) with x held fixed (what autograd
    gives for k in the loss, as in GRPO), ``grad_in_loss_se`` its standard error, ``grad_as_reward``
    the mean of k(x)·∇_θ log q_θ(x) (k as a detached REINFORCE reward). ``grad_kl_qp`` is the true
    gradient of KL(q_θ‖p) (the KL being estimated) and ``grad_kl_pq`` that of the reverse
    KL(p‖q_θ); ``bias_in_loss`` = grad_in_loss − grad_kl_qp.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, generator=gen, dtype=torch.float64)  # (S,) sampled once, at θ = 0
    rows = []
    for param in params:
        # one θ per sample, all 0, so that autograd returns per-sample gradients
        theta = torch.zeros(n_samples, dtype=torch.float64, requires_grad=True)  # (S,)
        if param == "loc":
            logq = _normal_logpdf(x, theta)  # (S,)
        elif param == "log_scale":
            logq = _normal_logpdf(x, 0.0, theta)  # (S,)
        else:
            raise ValueError(f"unknown parameter {param!r}; valid: loc, log_scale")
        (score,) = torch.autograd.grad(logq.sum(), theta, retain_graph=True)  # (S,) ∇ log q_θ(x)
        for mu in mus:
            logp = _normal_logpdf(x, mu)  # (S,)
            true_qp, true_pq = _true_kl_grads(mu, param)
            for kind in KL_ESTIMATORS:
                k = kl_estimate(logq, logp, kind)  # (S,)
                (g,) = torch.autograd.grad(k.sum(), theta, retain_graph=True)  # (S,) ∇_θ k at fixed x
                reward_g = k.detach() * score  # (S,)
                rows.append({
                    "case": f"q=N(0,1), p=N({mu:g},1)",
                    "mu": mu,
                    "param": param,
                    "estimator": kind,
                    "grad_in_loss": g.mean().item(),
                    "grad_in_loss_se": g.std().item() / math.sqrt(n_samples),
                    "grad_as_reward": reward_g.mean().item(),
                    "grad_kl_qp": true_qp,
                    "grad_kl_pq": true_pq,
                    "bias_in_loss": g.mean().item() - true_qp,
                })
    return rows


def categorical_estimators(
    policy_logits: Tensor,
    ref_logits: Tensor,
    n_samples: int = 1000,
    seed: int = 0,
    case: str = "policy‖ref",
) -> list[dict]:
    """Estimator statistics for categorical next-token distributions π (policy) and π_ref.

    Args:
        policy_logits, ref_logits: next-token logits at N positions (any leading shape, flattened).  # (N, V)
        n_samples: tokens drawn from π at every position.

    Per estimator: ``true_kl`` = mean over positions of the exact Σ_x π log(π/π_ref);
    ``bias_over_true`` and its standard error ``bias_se``; ``stdev_over_true`` = the RMS over
    positions of the within-position stdev of a one-token estimate (the noise of the estimator
    around each position's own KL, not the spread of KL between positions), over ``true_kl``;
    ``grad_err_kl_fwd`` = ‖E[∇_z k(x)] − ∇KL(π‖π_ref)‖ / ‖∇KL(π‖π_ref)‖, z the policy logits,
    ∇_z k(x) taken at fixed x as in GRPO, and the expectation over x ~ π exact: the gradient of
    Σ_x sg(π(x))·k(x), the sampling weights detached; ``grad_err_kl_rev`` the same against
    ∇KL(π_ref‖π); ``grad_noise_mc`` = ‖ĝ − E[∇_z k]‖ / ‖∇KL(π‖π_ref)‖ with ĝ the Monte Carlo mean
    over the ``n_samples`` drawn tokens (how noisy one such estimate is). Memory O(N·V) in float64
    plus O(N·n_samples).
    """
    v = policy_logits.shape[-1]
    z = policy_logits.detach().reshape(-1, v).double().requires_grad_(True)  # (N, V)
    log_ref = torch.log_softmax(ref_logits.detach().reshape(-1, v).double(), dim=-1)  # (N, V)
    log_pi = torch.log_softmax(z, dim=-1)  # (N, V)
    kl_fwd = (log_pi.exp() * (log_pi - log_ref)).sum(-1)  # (N,) exact KL(π‖π_ref)
    kl_rev = (log_ref.exp() * (log_ref - log_pi)).sum(-1)  # (N,) exact KL(π_ref‖π)
    (g_fwd,) = torch.autograd.grad(kl_fwd.sum(), z, retain_graph=True)  # (N, V)
    (g_rev,) = torch.autograd.grad(kl_rev.sum(), z, retain_graph=True)  # (N, V)
    true = kl_fwd.mean().item()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(log_pi.detach().exp(), n_samples, replacement=True, generator=gen)  # (N, S)
    lp, lr = log_pi.gather(1, idx), log_ref.gather(1, idx)  # (N, S)
    n = idx.shape[0]
    rows = []
    for kind in KL_ESTIMATORS:
        k = kl_estimate(lp, lr, kind)  # (N, S)
        (g_mc,) = torch.autograd.grad(k.sum(), z, retain_graph=True)  # (N, V)
        g_mc = g_mc / n_samples  # Monte Carlo mean of ∇_z k per position
        k_all = kl_estimate(log_pi, log_ref, kind)  # (N, V) k at every token
        weighted = (log_pi.detach().exp() * k_all).sum()  # Σ_x sg(π(x)) k(x): x-distribution fixed
        (g,) = torch.autograd.grad(weighted, z, retain_graph=True)  # (N, V) exact E_x[∇_z k(x)]
        within_var = k.detach().var(dim=1).mean().item()  # mean over positions of Var_x k
        rows.append({
            "case": case,
            "estimator": kind,
            "true_kl": true,
            "bias_over_true": (k.mean().item() - true) / true,
            "bias_se": math.sqrt(within_var / (n * n_samples)) / true,
            "stdev_over_true": math.sqrt(within_var) / true,
            "grad_err_kl_fwd": ((g - g_fwd).norm() / g_fwd.norm()).item(),
            "grad_err_kl_rev": ((g - g_rev).norm() / g_rev.norm()).item(),
            "grad_noise_mc": ((g_mc - g).norm() / g_fwd.norm()).item(),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``rows``; columns are the keys in order of first appearance."""
    cols = list(dict.fromkeys(key for row in rows for key in row))

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Bar charts of bias/true and stdev/true per estimator and case; saves a PNG at ``path``.

    Rows without ``bias_over_true`` / ``stdev_over_true`` (e.g. gradient rows) are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "bias_over_true" in r and "stdev_over_true" in r]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(cases), 1)
    for j, case in enumerate(cases):
        by_kind = {r["estimator"]: r for r in rows if r["case"] == case}
        xs = [i + j * width for i in range(len(KL_ESTIMATORS))]
        for ax, key, se_key in zip(axes, ("bias_over_true", "stdev_over_true"), ("bias_se", "stdev_se"),
                                   strict=True):
            heights = [by_kind[k][key] if k in by_kind else 0.0 for k in KL_ESTIMATORS]
            errors = [2 * by_kind[k].get(se_key, 0.0) if k in by_kind else 0.0 for k in KL_ESTIMATORS]
            ax.bar(xs, heights, width, yerr=errors, capsize=3, label=case)
    titles = ("bias / true KL (±2 s.e.)", "stdev / true KL (log scale)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(KL_ESTIMATORS))], KL_ESTIMATORS)
        ax.set_title(title)
    axes[0].axhline(0.0, color="black", linewidth=0.8)
    axes[1].set_yscale("log")
    stdevs = [r["stdev_over_true"] for r in rows if r["stdev_over_true"] > 0]
    if stdevs:  # bars on a log axis need a floor below the smallest one
        axes[1].set_ylim(bottom=min(stdevs) / 2)
    axes[1].legend(fontsize=8)
    fig.suptitle('Schulman\'s KL estimators, "Approximating KL Divergence" (2020)')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500_000, help="Gaussian Monte Carlo samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/kl_study"))
    parser.add_argument("--policy-logits", type=Path, help="torch-saved policy logits (..., V)")
    parser.add_argument("--ref-logits", type=Path, help="torch-saved reference logits (..., V)")
    parser.add_argument("--policy", help="a policy export (hf folder) whose samples and logits to study")
    parser.add_argument("--reference", help="its reference model's export (e.g. the stage it started from)")
    parser.add_argument("--token-samples", type=int, default=1000, help="tokens drawn per position")
    parser.add_argument("--max-positions", type=int, default=2048, help="positions kept (random subset)")
    args = parser.parse_args(argv)
    if (args.policy_logits is None) != (args.ref_logits is None):
        parser.error("--policy-logits and --ref-logits go together")
    if (args.policy is None) != (args.reference is None):
        parser.error("--policy and --reference go together")

    if args.policy is not None:
        from r1lab.bench.kl_tokens import capture_logits

        policy, ref = capture_logits(args.policy, args.reference, seed=args.seed)
        case = "GRPO policy‖reference"
    elif args.policy_logits is not None:
        policy = torch.load(args.policy_logits, map_location="cpu")
        ref = torch.load(args.ref_logits, map_location="cpu")
        case = "policy‖ref"
    else:  # a synthetic stand-in: a reference and a policy that drifted from it
        gen = torch.Generator().manual_seed(args.seed)
        ref = 2.0 * torch.randn(256, 64, generator=gen)
        policy = ref + 0.5 * torch.randn(256, 64, generator=gen)
        case = "synthetic policy‖ref"
    v = policy.shape[-1]
    policy, ref = policy.reshape(-1, v), ref.reshape(-1, v)
    if policy.shape[0] > args.max_positions:
        keep = torch.randperm(policy.shape[0], generator=torch.Generator().manual_seed(args.seed))
        keep = keep[: args.max_positions]
        policy, ref = policy[keep], ref[keep]

    tables = {
        "gaussian": gaussian_table(args.samples, args.seed),
        "gradient": gradient_bias_table(args.samples, args.seed),
        "categorical": categorical_estimators(policy, ref, args.token_samples, args.seed, case),
    }
    titles = {
        "gaussian": "KL estimators, q = N(0,1), p = N(mu,1) (Schulman 2020)",
        "gradient": "Gradient at fixed samples (k in the loss) vs k as a REINFORCE reward",
        "categorical": f"Categorical next-token distributions ({case}, {policy.shape[0]} positions)",
    }
    text = "\n\n".join(f"## {titles[name]}\n\n{format_table(rows)}" for name, rows in tables.items())
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    plot(tables["gaussian"] + tables["categorical"], args.out / "kl_study.png")
    print(f"wrote {args.out / 'table.md'} and {args.out / 'kl_study.png'}")
    return tables


if __name__ == "__main__":
    main()
