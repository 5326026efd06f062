"""Model execution: the rollout engines every stage samples through, and the training-side log-prob pass.

``make_engine(rollout_config, model, tokenizer).generate(...)`` samples (``engines``); the sampling
loop and its decoders (``sampling``, ``decoders``, ``static_kv``) are what the in-process engines run;
``sequence_logprobs`` (``logprobs``) recomputes the sampled tokens' log-probs with grad for the loss.
"""

from r1lab.generation.engines import (
    ENGINES,
    RolloutConfig,
    RolloutEngine,
    TorchEngine,
    generate_for_records,
    make_engine,
    register_engine,
)
from r1lab.generation.logprobs import completion_logits, sequence_logprobs
from r1lab.generation.rollout import Rollout, SamplingParams, check_sampling, decode_texts, mix_seed, torch_generator
from r1lab.generation.sampling import sample

__all__ = [
    "ENGINES",
    "Rollout",
    "RolloutConfig",
    "RolloutEngine",
    "SamplingParams",
    "TorchEngine",
    "check_sampling",
    "completion_logits",
    "decode_texts",
    "generate_for_records",
    "make_engine",
    "mix_seed",
    "register_engine",
    "sample",
    "sequence_logprobs",
    "torch_generator",
]
