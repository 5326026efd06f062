"""Rollout engines: the one API through which every stage samples.

    engine = make_engine(rollout_config, policy, tokenizer)
    rollout = engine.generate(prompt_ids, prompt_mask, SamplingParams(...), n=G, seed=mix_seed(...))

``generate`` repeats each left-padded prompt row ``n`` times (prompt-major), samples one completion
per row and returns a ``Rollout``: completion ids and mask, per-token log-probs of the T-scaled
policy, truncation flags and texts. The engines that run the model in this process read its live
weights at every call; an engine that keeps its own copy of the weights (an inference server)
implements ``sync_weights``, which the RL stages call after each optimiser step, and ``close``.

Engines by name (``rollout.engine``):

- ``auto``: the static-KV-cache decoder where the model allows it, else the Hugging Face forward;
- ``static_kv``: the static-KV-cache decoder, an error for a model it does not cover;
- ``hf``: the model's own Hugging Face forward with its ``DynamicCache``;
- any name added with ``register_engine`` (a factory, or a ``"module:attribute"`` path imported on
  first use), which is how an engine with its own dependencies plugs in without touching the stages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation.rollout import Rollout, SamplingParams, decode_texts, torch_generator
from r1lab.generation.sampling import sample


@dataclass(frozen=True)
class RolloutConfig:
    """The ``rollout`` config group: which engine samples, and that engine's own settings."""

    engine: str = "auto"
    options: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"rollout.engine: unknown engine {self.engine!r} (known: {sorted(ENGINES)})")

    @classmethod
    def of(cls, spec: RolloutConfig | Mapping | str | None) -> RolloutConfig:
        """A ``RolloutConfig`` from a config node, a bare engine name or None (the default)."""
        if isinstance(spec, RolloutConfig):
            return spec
        if spec is None:
            return cls()
        if isinstance(spec, str):
            return cls(engine=spec)
        unknown = set(spec) - {"engine", "options"}
        if unknown:
            raise ValueError(f"rollout: unknown key(s) {sorted(unknown)} (use rollout.engine, rollout.options)")
        return cls(engine=spec.get("engine", "auto"), options=dict(spec.get("options") or {}))


class RolloutEngine:
    """Samples completions of a policy. Subclasses implement ``generate``; ``sync_weights`` and
    ``close`` matter only to engines that hold their own copy of the weights."""

    name = "engine"

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, *,
                 n: int = 1, seed: int | None = None) -> Rollout:
        raise NotImplementedError

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights (in-process engines always do)."""

    def close(self) -> None:
        """Free what the engine holds outside the policy (none for in-process engines)."""

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc) -> None:  # ``with load_policy(...)[1] as engine``: closed however the block ends
        self.close()


class TorchEngine(RolloutEngine):
    """The policy itself, in this process, through ``r1lab.generation.sampling.sample``.

    The model is put in eval mode for the call and restored after; prompts are moved to its device,
    and the seed becomes a ``torch.Generator`` there, so one seed gives one draw on a given machine.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, decoder: str = "auto", **options) -> None:
        if options:
            raise ValueError(f"rollout.options: the {decoder} engine takes no options, got {sorted(options)}")
        super().__init__(model, tokenizer)
        self.decoder = decoder
        self.name = decoder

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, *,
                 n: int = 1, seed: int | None = None) -> Rollout:
        device = next(self.model.parameters()).device
        ids, mask = prompt_ids.to(device), prompt_mask.to(device)
        if n > 1:
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)  # (B·n, P)
        was_training = self.model.training
        self.model.eval()
        try:
            rollout = sample(self.model, ids, mask, max_new_tokens=params.max_new_tokens,
                             eos_id=self.tokenizer.eos_token_id, pad_id=self.tokenizer.pad_token_id,
                             temperature=params.temperature, top_p=params.top_p, greedy=params.greedy,
                             generator=torch_generator(seed, device), decoder=self.decoder)
        finally:
            self.model.train(was_training)
        rollout.texts = decode_texts(self.tokenizer, rollout.completion_ids, rollout.completion_mask)
        return rollout


EngineFactory = Callable[..., RolloutEngine]
ENGINES: dict[str, EngineFactory | str] = {
    "auto": lambda model, tokenizer, **options: TorchEngine(model, tokenizer, "auto", **options),
    "static_kv": lambda model, tokenizer, **options: TorchEngine(model, tokenizer, "static_kv", **options),
    "hf": lambda model, tokenizer, **options: TorchEngine(model, tokenizer, "hf", **options),
    "vllm": "r1lab.generation.vllm_engine:factory",
}


def register_engine(name: str, factory: EngineFactory | str) -> None:
    """Make ``rollout.engine=<name>`` build ``factory(model, tokenizer, **rollout.options)``; a string
    ``"package.module:attribute"`` is imported when the engine is first built."""
    ENGINES[name] = factory


def make_engine(spec: RolloutConfig | Mapping | str | None, model: torch.nn.Module, tokenizer) -> RolloutEngine:
    """The engine a ``rollout`` config names, bound to ``model`` and its tokenizer."""
    config = RolloutConfig.of(spec)
    factory = ENGINES[config.engine]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory(model, tokenizer, **dict(config.options))


def generate_for_records(engine: RolloutEngine, tok: Tokenized, records: list[dict], params: SamplingParams,
                         n: int, seed: int | None) -> tuple[list[list[str]], list[int]]:
    """``n`` completion texts per record (its ``prompt`` rendered by ``tok``) and the number of them that
    were truncated, per record."""
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in records], tok.pad)
    rollout = engine.generate(ids, mask, params, n=n, seed=seed)
    texts = rollout.texts
    truncated = rollout.truncated.view(len(records), n).sum(-1).tolist()
    return [texts[i * n : (i + 1) * n] for i in range(len(records))], truncated
