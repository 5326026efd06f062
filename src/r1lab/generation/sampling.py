"""The sampling loop every engine that runs the model in this process shares.

One prefill of the left-padded prompts, then one cached forward per new token for the whole batch;
the loop stops as soon as every row has produced EOS, and runs no forward for a token that will not
be sampled. The log-probs it returns are those of the temperature-scaled policy, log softmax(z / T),
before top-p truncation: the same quantity the training pass computes
(``r1lab.generation.logprobs.sequence_logprobs``), so that GRPO's π_old is exactly the sampling
policy (as TRL and verl do).
"""

from __future__ import annotations

import torch

from r1lab.generation.adapters import unwrap
from r1lab.generation.decoders import make_decoder
from r1lab.generation.rollout import Rollout
from r1lab.tensors import token_logprobs


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, V) logits with -inf outside the smallest set of tokens whose probability mass reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (B, V) ``probs`` by inverting the CDF with one uniform per row.

    The same distribution as ``torch.multinomial(probs, 1)``, which on CPU draws B·V exponentials
    (most of a tiny model's sampling time). Zero-probability tokens are never drawn: ``searchsorted``
    returns the first index whose cumulative mass exceeds u, and mass is flat across them.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    decoder: str = "auto",
) -> Rollout:
    """Generate one completion per row of the left-padded prompts (B, P) with a KV cache.

    ``decoder`` picks the decoder (``auto``: the static-KV one where it applies; ``hf``: the model's
    own forward; ``static_kv``: that one or an error). The model is run as it is (no mode switch);
    the engine (``r1lab.generation.engines``) puts it in eval mode around this call.
    """
    batch = prompt_ids.shape[0]
    runner, description = make_decoder(unwrap(model), max_new_tokens, decoder)
    logits = runner.prefill(prompt_ids, prompt_mask)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, logps, masks = [], [], []
    for step in range(max_new_tokens):
        scaled = logits.float() if temperature == 1.0 else logits.float() / temperature  # (B, V)
        if greedy:
            token = scaled.argmax(-1)
        else:
            probs = (top_p_filter(scaled, top_p) if top_p < 1.0 else scaled).softmax(-1)
            token = sample_categorical(probs, generator)
        tokens.append(token)
        logps.append(token_logprobs(scaled, token))  # temperature already applied
        masks.append(~finished)
        finished = finished | (token == eos_id)
        if step == max_new_tokens - 1 or finished.all():
            break  # no forward for a token that will not be sampled
        # a finished row's next input is its own token: its logits are never used, and the rows are independent
        logits = runner.step(token)

    mask = torch.stack(masks, 1)  # (B, T) alive before the token: the token is generated (EOS included)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=torch.stack(tokens, 1).masked_fill(~mask, pad_id),
        completion_mask=mask.long(),
        logprobs=torch.stack(logps, 1).masked_fill(~mask, 0.0),
        truncated=~finished,
        decoder=description,
    )
