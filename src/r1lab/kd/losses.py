"""Token-level knowledge distillation: the student learns the teacher's next-token distribution.

With temperature τ, P_T = softmax(z_T/τ) and P_S = softmax(z_S/τ) over a shared vocabulary
(teacher and student must use the same tokenizer ids):

- ``"forward_kl"``: KL(P_T‖P_S), Hinton et al. 2015 ("Distilling the Knowledge in a Neural
  Network", arXiv 1503.02531); mass-covering.
- ``"reverse_kl"``: KL(P_S‖P_T); mode-seeking (MiniLLM, Gu et al. 2024, arXiv 2306.08543).
- ``"jsd"``: generalised JSD_β = β KL(P_T‖M) + (1−β) KL(P_S‖M), M = β P_T + (1−β) P_S
  (GKD, Agarwal et al. 2024, arXiv 2306.13649).

JSD_β vanishes at β = 0 and β = 1 (M becomes one of the two distributions and its weight is 0).
Convention, the one of GKD and of TRL's ``generalized_jsd_loss``: β = 0 is the forward KL and β = 1
the reverse KL. Why those ends: near β = 0, M = P_S + β(P_T − P_S) and KL(P_S‖M) = O(β²), so
JSD_β = β·KL(P_T‖P_S) + O(β²); near β = 1 symmetrically JSD_β = (1−β)·KL(P_S‖P_T) + O((1−β)²).
The end points are the limits of JSD_β/β and JSD_β/(1−β): the divergence each end leans towards.
The loss is continuous in direction but not in scale there (β = 1e-6 gives ~1e-6 × forward KL).

Everything is computed in float32 from log_softmax; log M by logsumexp(log β + log P_T,
log(1−β) + log P_S). The teacher is always detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from r1lab.tensors import masked_mean

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p‖q) over the last dim from log-probs; (…, V) → (…)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def kd_per_token(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """Per-position divergence between teacher and student; logits (B, T, V) → (B, T).

    ``top_k``: keep only the teacher's k most likely token ids at each position and renormalise
    both distributions over them. Saves memory for large vocabularies (the log-softmax runs over
    k, not V) at the cost of an approximation: the mass outside the teacher's top k is ignored, so
    the student is not pushed off tokens the teacher deems unlikely; exact when k = V.
    """
    if kind not in KD_KINDS:
        raise ValueError(f"unknown distillation loss {kind!r}; valid: {', '.join(KD_KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"JSD beta must lie in [0, 1], got {beta}")
    zs = student_logits.float()  # (B, T, V)
    zt = teacher_logits.detach().float()  # (B, T, V)
    if top_k is not None:
        ids = zt.topk(top_k, dim=-1).indices  # (B, T, k)
        zs, zt = zs.gather(-1, ids), zt.gather(-1, ids)  # (B, T, k)
    log_ps = F.log_softmax(zs / temperature, dim=-1)  # (B, T, V)
    log_pt = F.log_softmax(zt / temperature, dim=-1)  # (B, T, V)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(log_pt, log_ps)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(log_ps, log_pt)
    log_m = torch.logsumexp(
        torch.stack([log_pt + math.log(beta), log_ps + math.log(1.0 - beta)]), dim=0
    )  # (B, T, V)
    return beta * _kl(log_pt, log_m) + (1.0 - beta) * _kl(log_ps, log_m)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """Masked token mean of ``kd_per_token``: logits (B, T, V), mask (B, T) → scalar.

    Not multiplied by τ²; ``distill_objective`` does that when mixing with the hard-label loss.
    0 when the mask is empty.
    """
    per_token = kd_per_token(
        student_logits, teacher_logits, kind=kind, beta=beta, temperature=temperature, top_k=top_k
    )  # (B, T)
    return masked_mean(per_token, mask)


def distill_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    kind: str = "forward_kl",
    beta: float = 0.5,
    top_k: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """α·CE(labels, student at τ = 1) + (1 − α)·τ²·KD (Hinton et al. 2015, arXiv 1503.02531).

    The τ² keeps the soft term's gradient on the scale of the hard term's as τ grows (the soft
    gradients scale as 1/τ²). Only response tokens count: mask = labels != −100.

    Args:
        student_logits, teacher_logits: (B, T, V), already aligned with ``labels``: position t
            predicts ``labels[:, t]`` (shift logits[:, :-1] / labels[:, 1:] before calling).
        labels: next-token ids, −100 where ignored (prompt, padding).  # (B, T)
        alpha: weight of the hard-label cross-entropy (1 = plain SFT).
        temperature, kind, beta, top_k: see ``kd_per_token``.

    Returns:
        loss (scalar) and detached metrics ``ce``, ``kd`` (without τ²), ``loss``.
    """
    mask = labels != -100  # (B, T)
    ce_per_token = F.cross_entropy(
        student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none"
    ).view_as(labels)  # (B, T); 0 at ignored positions
    m = mask.float()
    ce = (ce_per_token * m).sum() / m.sum().clamp(min=1.0)
    kd = kd_loss(
        student_logits, teacher_logits, mask,
        kind=kind, beta=beta, temperature=temperature, top_k=top_k,
    )
    loss = alpha * ce + (1.0 - alpha) * temperature**2 * kd
    return loss, {"ce": ce.detach(), "kd": kd.detach(), "loss": loss.detach()}
