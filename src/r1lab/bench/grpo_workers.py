"""The two workers of the GRPO benchmark (``r1lab.bench.grpo_bench``): one GRPO workload through r1lab's
module and through TRL's ``GRPOTrainer``, each in its own process, and a third that measures the peak
memory of one training pass (r1lab's fused log-prob pass against a plain forward over full logits).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(threads: int, size: int = 1536, repeats: int = 5) -> float:
    """The machine's float32 matrix-product throughput on ``threads`` threads (best of ``repeats``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _status_mb(field: str) -> float:
    """A field of /proc/self/status in MiB (VmRSS: now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tiny_export(path: Path) -> Path:
    """The tiny backbone with its seeded random weights, saved as a Hugging Face folder."""
    from r1lab.models import Backbone
    from r1lab.modules.base import export_hf

    backbone = Backbone(tiny=dict(family="llama", vocab_size=512, hidden_size=128, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                                  max_position_embeddings=512, tie_word_embeddings=True))
    return export_hf(backbone.build_model(), backbone.tokenizer, path)


def _prompts(tokenizer, n: int) -> list[dict]:
    from r1lab.data.tinyworld import TinyWorld

    return TinyWorld(sizes={"train": n, "val": 0, "test": 0}).load("train")


def run_r1lab(model_dir: str, w: dict) -> dict:
    import lightning as L
    import torch

    from r1lab.data import R1DataModule
    from r1lab.data.tinyworld import TinyWorld
    from r1lab.generation import sample, sequence_logprobs
    from r1lab.generation.adapters import unwrap
    from r1lab.generation.static_kv import StaticCacheDecoder
    from r1lab.models import Backbone
    from r1lab.modules.grpo import GRPO
    from r1lab.rewards import RewardSet

    torch.set_num_threads(w["threads"])
    backbone = Backbone(name_or_path=model_dir, dtype="float32", lora={"r": w["lora"]} if w.get("lora") else None)
    n_prompts = w["prompts_per_step"] * w["steps"]
    dm = R1DataModule(TinyWorld(sizes={"train": n_prompts, "val": 0, "test": 0}), mode="rl", template=w["template"],
                      system_prompt="", batch_size=w["prompts_per_step"], max_response_tokens=w["max_new_tokens"])
    dm.connect(backbone.tokenizer)
    module = GRPO(backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=w["lr"]),
                  rewards=RewardSet(functions={"accuracy": "accuracy", "format": "format"}),
                  group_size=w["group_size"], max_new_tokens=w["max_new_tokens"], beta=w["beta"],
                  kl_estimator=w["kl_estimator"], log_completions_every=0, evaluation={"k": 0},
                  rollout={"engine": w.get("engine", "auto")}, micro_batch_size=w.get("micro_batch_size"))
    times, samples, tokens = [], [], []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, *args):
            times.append(time.perf_counter() - self.t)
            metrics = trainer.callback_metrics
            samples.append(float(metrics["train/sample_share"]))
            tokens.append(float(metrics["train/completion_length"]) * w["prompts_per_step"] * w["group_size"])

    trainer = L.Trainer(accelerator="cpu", max_steps=w["steps"], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Clock()])
    trainer.fit(module, datamodule=dm)
    step = statistics.median(times[1:])

    # The bare model work inside one step, on the same shapes (median of bare_repeats timings each).
    batch = next(iter(dm.train_dataloader()))
    ids = batch["prompt_ids"].repeat_interleave(w["group_size"], 0)
    mask = batch["prompt_mask"].repeat_interleave(w["group_size"], 0)
    policy, tok = module.policy, backbone.tokenizer

    def timed(fn):
        runs = []
        for _ in range(w["bare_repeats"]):
            t0 = time.perf_counter()
            out = fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs), out

    decode_s, roll = timed(lambda: sample(policy, ids, mask, max_new_tokens=w["max_new_tokens"], eos_id=-1,
                                          pad_id=tok.pad_token_id))
    micro = torch.arange(len(ids)).split(w.get("micro_batch_size") or len(ids))  # as the step runs them

    def passes(model, backward: bool):
        for rows in micro:
            logp = sequence_logprobs(model, ids[rows], mask[rows], roll.completion_ids[rows],
                                     roll.completion_mask[rows])
            if backward:
                logp.sum().backward()

    fwd_bwd_s, _ = timed(lambda: passes(policy, True))
    with torch.no_grad():
        ref_s, _ = timed(lambda: passes(module.reference, False))
    bare = decode_s + fwd_bwd_s + ref_s
    fallback = StaticCacheDecoder.unsupported(unwrap(policy))  # as the sampler sees it (a LoRA model too)
    # Model FLOPs of the training pass: 6 x parameters x the tokens it runs (each distinct prompt once,
    # with the shared-prompt forward, and every completion token up to its EOS).
    params = sum(p.numel() for p in policy.parameters())  # all of them: LoRA still runs every frozen matmul
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    prompt_tokens = int(batch["prompt_mask"].sum())
    trained = prompt_tokens + int(roll.completion_mask.sum())
    peak = matmul_gflops(w["threads"])
    mfu = 6 * params * trained / fwd_bwd_s / 1e9 / peak
    engine = w.get("engine", "auto")
    if engine == "vllm":
        decoder = "vLLM (in-process, its own copy of the weights)"
    elif engine == "hf" or fallback:
        decoder = "generic HF forward" + (f" ({fallback})" if fallback else "")
    else:
        decoder = "static KV cache"
    return {"framework": "r1lab", "engine": engine, "decoder": decoder,
            "step_s": step, "tokens_per_s": statistics.median(tokens[1:]) / step,
            "sample_share": statistics.median(samples[1:]), "peak_mb": _peak_mb(),
            "bare_model_work_s": bare, "overhead_vs_bare": step / bare, "parameters": params, "trainable": trainable,
            "trained_tokens": trained, "matmul_gflops": peak, "training_pass_mfu": mfu,
            "bare_s": {"decode": decode_s, "policy_fwd_bwd": fwd_bwd_s, "reference_fwd": ref_s}}


def run_trl(model_dir: str, w: dict) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.data.templates import render_prompt
    from r1lab.models.tokenizer import load_tokenizer
    from r1lab.rewards import accuracy_reward, format_reward_strict

    torch.set_num_threads(w["threads"])
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    records = _prompts(tok, w["prompts_per_step"] * w["steps"])
    data = datasets.Dataset.from_list([{"prompt": render_prompt(r["prompt"], w["template"], tok, ""),
                                        "answer": r["answer"]} for r in records])

    def accuracy(completions, answer, **kw):
        return [accuracy_reward("", c, {"answer": a}) for c, a in zip(completions, answer)]

    def fmt(completions, **kw):
        return [format_reward_strict("", c, {}) for c in completions]

    times, tokens = [], []
    rows = w["prompts_per_step"] * w["group_size"]
    micro = w.get("micro_batch_size") or rows

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, *args, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                tokens.append(logs["completions/mean_length"] * w["prompts_per_step"] * w["group_size"])

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
            # one generation of every row per optimizer step, trained in micro-batches as r1lab's
            per_device_train_batch_size=micro, num_generations=w["group_size"],
            gradient_accumulation_steps=rows // micro, max_completion_length=w["max_new_tokens"], beta=w["beta"],
            learning_rate=w["lr"], max_steps=w["steps"], temperature=1.0, loss_type="grpo", num_iterations=1,
            seed=0, dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL's default (True) recomputes the forward in backward; r1lab does not
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        peft_config = None
        if w.get("lora"):  # the same adapters as r1lab's backbone.lora (r, alpha 2r, every projection)
            from peft import LoraConfig

            from r1lab.models.backbone import LORA_TARGETS

            peft_config = LoraConfig(r=w["lora"], lora_alpha=2 * w["lora"], lora_dropout=0.0,
                                     target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, fmt], args=cfg, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()], peft_config=peft_config)
        trainer.train()
    step = statistics.median(times[1:])
    per_step_tokens = statistics.median(tokens[1:]) if len(tokens) > 1 else float("nan")
    return {"framework": "trl", "step_s": step, "tokens_per_s": per_step_tokens / step, "peak_mb": _peak_mb()}


def run_memory(model_dir: str, w: dict, mode: str) -> dict:
    """Peak memory of one training pass (forward and backward) over a GRPO step's sequences (one
    micro-batch of them with ``micro_batch_size``): ``fused``
    is r1lab's ``sequence_logprobs`` (the output layer and the log-softmax in row chunks), ``plain`` one
    forward that returns the full (B, T, V) logits and a log-softmax over them. Run each in its own
    process: the figure is the peak resident memory during the pass (VmHWM, reset just before it) minus what
    the process held before it."""
    import torch

    from r1lab.data.collate import Tokenized, left_pad
    from r1lab.generation import sample, sequence_logprobs
    from r1lab.models import Backbone
    from r1lab.tensors import positions_from_mask, token_logprobs

    torch.set_num_threads(w["threads"])
    backbone = Backbone(name_or_path=model_dir, dtype="float32")
    model = backbone.build_model().train()

    tok = Tokenized(backbone.tokenizer, w["template"], 256, w["max_new_tokens"], "")
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in _prompts(None, w["prompts_per_step"])],
                         backbone.tokenizer.pad_token_id)
    ids, mask = ids.repeat_interleave(w["group_size"], 0), mask.repeat_interleave(w["group_size"], 0)
    micro = w.get("micro_batch_size") or len(ids)  # the pass of one micro-batch, as the step runs it
    ids, mask = ids[:micro], mask[:micro]
    with torch.no_grad():
        roll = sample(model.eval(), ids, mask, max_new_tokens=w["max_new_tokens"], eos_id=-1,
                      pad_id=backbone.tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    model.train()
    # the pass's own peak: VmHWM reset to the RSS now (sampling and loading peaked higher for a small model)
    reset = _reset_peak_rss()
    before, t0 = (_status_mb("VmRSS") if reset else _rss_mb()), time.perf_counter()
    if mode == "fused":
        logp = sequence_logprobs(model, ids, mask, roll.completion_ids, roll.completion_mask)
    else:
        attention = torch.cat([mask, roll.completion_mask], 1)
        logits = model(input_ids=torch.cat([ids, roll.completion_ids], 1), attention_mask=attention,
                       position_ids=positions_from_mask(attention)).logits[:, ids.shape[1] - 1 : -1]
        logp = token_logprobs(logits, roll.completion_ids) * roll.completion_mask
    logp.sum().backward()
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM") if reset else _peak_mb()
    return {"framework": f"memory-{mode}", "pass_s": seconds, "rss_before_mb": before,
            "pass_peak_mb": peak - before, "shape": list(roll.completion_ids.shape),
            "vocab": model.config.vocab_size}

