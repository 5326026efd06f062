"""Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled from π_θ.

J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
With q = π_θ (the sampler) and p = π_ref, r = p(x)/q(x) = exp(ref_logp − logp):

    k1 = −log r                 unbiased, high variance, can be negative
    k2 = ½ (log r)²             biased (exact to second order), low variance, ≥ 0
    k3 = (r − 1) − log r        unbiased, low variance, ≥ 0

GRPO (DeepSeekMath, arXiv 2402.03300, eq. 4) puts k3 in the loss. An unbiased *value* is not an
unbiased *gradient*: at fixed samples ∇k1 has expectation 0, ∇k2 is unbiased for ∇KL(π_θ‖π_ref)
and ∇k3 is unbiased for ∇KL(π_ref‖π_θ) (see ``r1lab.bench.kl_study``).
"""

from __future__ import annotations

from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(π_θ‖π_ref); any shape, ``logp`` and ``ref_logp`` broadcast.

    Args:
        logp: log π_θ(x) of tokens x sampled from π_θ.  # (...)
        ref_logp: log π_ref(x) of the same tokens.      # (...)
        kind: "k1", "k2" or "k3" (Schulman 2020); GRPO uses "k3" (arXiv 2402.03300, eq. 4).
    """
    log_r = ref_logp - logp  # (...) log π_ref/π_θ
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        # expm1 keeps r − 1 accurate when π_θ ≈ π_ref, where k3 ≈ ½(log r)² is tiny
        return log_r.expm1() - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_ESTIMATORS)}")
