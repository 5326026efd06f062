"""What a rollout engine is asked for and what it returns: sampling parameters, seeds, the rollout.

Every engine (the static-KV-cache decoder, the Hugging Face forward, or one that keeps its own copy
of the weights) takes the same ``SamplingParams`` and returns the same ``Rollout``, so a stage never
depends on which engine sampled. Seeds are plain integers, mixed from a run's seed and counters by
``mix_seed``, so a run, a resumed run and every DDP rank draw reproducible, distinct streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def mix_seed(seed: int, counter: int = 0, stream: int = 0) -> int:
    """One integer seed from a base seed, a counter (a step, a rollout, a rank) and a stream offset:
    ``seed · 1_000_003 + counter · 7919 + stream``. Within one base seed, distinct (counter, stream)
    pairs with ``0 <= stream < 7919`` give distinct seeds: a GRPO run's rollouts and ranks, a rejection
    job's batches, the policies of a preference job never share a stream."""
    return int(seed) * 1_000_003 + int(counter) * 7919 + int(stream)


def torch_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (None: no generator, the global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


@dataclass(frozen=True)
class SamplingParams:
    """How completions are drawn; the same meaning in every engine.

    Args:
        max_new_tokens: the most tokens a completion may have (EOS included).
        temperature: T of softmax(z / T); must be > 0 (greedy decoding ignores it for the choice of
            token, but the returned log-probs are still those of the T-scaled policy).
        top_p: nucleus sampling: draw from the smallest set of tokens whose mass reaches top_p (1 = off).
        greedy: take the most likely token (no randomness).
        key: the config key these values came from, named in errors (``module``, ``job.sampling``).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    key: str = field(default="sampling", compare=False, repr=False)

    def __post_init__(self) -> None:
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.key)


def check_sampling(max_new_tokens, temperature, top_p, key: str = "sampling",
                   names: tuple[str, str, str] = ("max_new_tokens", "temperature", "top_p")) -> None:
    """Raise ``ValueError`` naming ``<key>.<name>`` unless max_new_tokens >= 1, temperature > 0 and
    0 < top_p <= 1 (a temperature of 0 divides the logits by zero: NaN log-probs, NaN losses)."""
    n_key, t_key, p_key = (f"{key}.{n}" for n in names)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"{n_key}: must be an integer >= 1, got {max_new_tokens!r}")
    for name, value in ((t_key, temperature), (p_key, top_p)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if not temperature > 0:
        raise ValueError(f"{t_key}: must be > 0, got {temperature} (the logits are divided by it)")
    if not 0 < top_p <= 1:
        raise ValueError(f"{p_key}: must lie in (0, 1], got {top_p}")


@dataclass
class Rollout:
    """Completions of left-padded prompts, one row per completion (prompts repeated n times, prompt-major:
    [p0 c0..c(n−1), p1 c0.., …])."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T) right-padded with pad_id after EOS
    completion_mask: torch.Tensor  # (B, T) 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T) log π(token) of the T-scaled policy at sampling time, 0 off the mask
    truncated: torch.Tensor  # (B,) True where no EOS came within max_new_tokens
    texts: list[str] | None = None  # the completions as text, without EOS and padding
    decoder: str = ""  # what produced the tokens (e.g. "static_kv", or "hf (<why the fast path did not apply>)")
    # True where ``logprobs`` come from an engine's own copy of the weights and kernels (vLLM), not from
    # the policy's forward: they differ from the training pass by the train/inference mismatch, which
    # GRPO measures (and corrects with TIS when the engine has a ``tis_cap``).
    engine_logprobs: bool = False

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def decode_texts(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
    """Completion texts, without the EOS and padding."""
    eos = tokenizer.eos_token_id  # a property: read once, not per token
    rows = [[t for t, m in zip(ids, mask) if m and t != eos]
            for ids, mask in zip(completion_ids.tolist(), completion_mask.tolist())]
    return tokenizer.batch_decode(rows, skip_special_tokens=False)
