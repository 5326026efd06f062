"""GRPO step benchmark on the tiny model: ``python -m r1lab.bench.grpo_bench`` (``make bench-grpo``).

A fixed workload (below), on each of two prompt sets (``TEMPLATES``: the long R1-Zero prompts of the
r1_zero stage and the short chat prompts of the grpo stage), runs in its own process through r1lab's
GRPO module and, when ``trl`` is installed (the ``bench`` extra), through TRL's ``GRPOTrainer`` in a
second process with the same model, prompts, G, lengths, β, fp32 and thread count, and without
gradient checkpointing (TRL turns it on by default; r1lab does not use it). Each worker prints
seconds per step (median after a warm-up step), sampled tokens per second, peak resident memory and,
for r1lab, the share of the step spent in the rollout (decode and reference forward); r1lab's step is
also compared with the bare model work it contains (a cached decode of the same length, one policy
forward+backward and one reference forward over the same sequences). Each framework runs
``--repeats`` times per prompt set (default 3), alternating which goes first (the machine's speed
drifts); the speed-up printed is the median of the paired ratios.

``--threads N`` sets both workers' thread count (default: the workload's 2). On a machine shared with
other jobs, pin the whole run to free cores and match the threads to them, e.g.
``taskset -c 1 python -m r1lab.bench.grpo_bench --threads 1``: the ratio to TRL is only meaningful
when both workers ran under the same pinning and load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD = {
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 64,
    "beta": 0.04,
    "kl_estimator": "k3",
    "lr": 1e-5,
    "steps": 6,  # the first is a warm-up and is not counted
    "threads": 2,
    "template": "r1_zero",
}

# The two prompt sets the workload runs on, the two GRPO stages of the tiny pipeline.
TEMPLATES = {
    "r1_zero": "the r1_zero stage's prompts: the paper's R1-Zero template, 92-102 tokens",
    "chat": "the grpo stage's prompts: the chat template without a system prompt, 11-21 tokens",
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    from r1lab.generation.static_kv import StaticCacheDecoder
    from r1lab.models import Backbone
    from r1lab.modules.grpo import GRPO
    from r1lab.rewards import RewardSet

    torch.set_num_threads(w["threads"])
    backbone = Backbone(name_or_path=model_dir, dtype="float32")
    n_prompts = w["prompts_per_step"] * w["steps"]
    dm = R1DataModule(TinyWorld(sizes={"train": n_prompts, "val": 0, "test": 0}), mode="rl", template=w["template"],
                      system_prompt="", batch_size=w["prompts_per_step"])
    dm.connect(backbone.tokenizer)
    module = GRPO(backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=w["lr"]),
                  rewards=RewardSet(functions={"accuracy": "accuracy", "format": "format"}),
                  group_size=w["group_size"], max_new_tokens=w["max_new_tokens"], beta=w["beta"],
                  kl_estimator=w["kl_estimator"], log_completions_every=0, evaluation={"k": 0})
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

    # The bare model work inside one step, on the same shapes (median of 3 timings each).
    batch = next(iter(dm.train_dataloader()))
    ids = batch["prompt_ids"].repeat_interleave(w["group_size"], 0)
    mask = batch["prompt_mask"].repeat_interleave(w["group_size"], 0)
    policy, tok = module.policy, backbone.tokenizer

    def timed(fn):
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs), out

    decode_s, roll = timed(lambda: sample(policy, ids, mask, max_new_tokens=w["max_new_tokens"], eos_id=-1,
                                          pad_id=tok.pad_token_id))
    fwd_bwd_s, _ = timed(lambda: sequence_logprobs(policy, ids, mask, roll.completion_ids,
                                                   roll.completion_mask).sum().backward())
    with torch.no_grad():
        ref_s, _ = timed(lambda: sequence_logprobs(module.reference, ids, mask, roll.completion_ids,
                                                   roll.completion_mask))
    bare = decode_s + fwd_bwd_s + ref_s
    fallback = StaticCacheDecoder.unsupported(policy)
    return {"framework": "r1lab", "decoder": f"generic HF forward ({fallback})" if fallback else "static KV cache",
            "step_s": step, "tokens_per_s": statistics.median(tokens[1:]) / step,
            "sample_share": statistics.median(samples[1:]), "peak_mb": _peak_mb(),
            "bare_model_work_s": bare, "overhead_vs_bare": step / bare,
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
            per_device_train_batch_size=w["prompts_per_step"] * w["group_size"], num_generations=w["group_size"],
            gradient_accumulation_steps=1, max_completion_length=w["max_new_tokens"], beta=w["beta"],
            learning_rate=w["lr"], max_steps=w["steps"], temperature=1.0, loss_type="grpo", num_iterations=1,
            seed=0, dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL's default (True) recomputes the forward in backward; r1lab does not
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, fmt], args=cfg, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()])
        trainer.train()
    step = statistics.median(times[1:])
    per_step_tokens = statistics.median(tokens[1:]) if len(tokens) > 1 else float("nan")
    return {"framework": "trl", "step_s": step, "tokens_per_s": per_step_tokens / step, "peak_mb": _peak_mb()}


def _worker(kind: str, model_dir: str, w: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(w["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "r1lab.bench.grpo_bench", "--worker", kind, "--model", model_dir,
                           "--threads", str(w["threads"]), "--template", w["template"], "--steps", str(w["steps"])],
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare(model_dir: str, w: dict, repeats: int, have_trl: bool) -> dict:
    """``repeats`` runs of each framework on one workload, alternating which goes first (the machine's
    speed drifts); the speed-up is the median of the paired ratios TRL ÷ r1lab."""
    runs: dict[str, list] = {"r1lab": [], "trl": []}
    for i in range(repeats):
        order = ["r1lab", "trl"] if i % 2 == 0 else ["trl", "r1lab"]
        for kind in order:
            if kind == "r1lab" or have_trl:
                runs[kind].append(_worker(kind, model_dir, w))
    out = {"workload": w, "r1lab": runs["r1lab"]}
    if have_trl:
        out["trl"] = runs["trl"]
        out["speedup_vs_trl"] = [t["step_s"] / r["step_s"] for r, t in zip(runs["r1lab"], runs["trl"])]
        out["median_speedup_vs_trl"] = statistics.median(out["speedup_vs_trl"])
    return out


def _report(name: str, res: dict) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in res[kind])

    r = res["r1lab"][-1]
    print(f"[{name}] {TEMPLATES[name]}")
    print(f"  r1lab: {med('r1lab', 'step_s'):.3f} s/step, {med('r1lab', 'tokens_per_s'):.0f} sampled tokens/s, "
          f"peak {med('r1lab', 'peak_mb'):.0f} MB, sampling {100 * med('r1lab', 'sample_share'):.0f}% of the step; "
          f"step / bare model work = {med('r1lab', 'overhead_vs_bare'):.2f}; decoder: {r['decoder']}")
    print("         bare model work (last run): " + ", ".join(f"{k} {v:.3f} s" for k, v in r["bare_s"].items()))
    if "trl" in res:
        print(f"  trl:   {med('trl', 'step_s'):.3f} s/step, {med('trl', 'tokens_per_s'):.0f} sampled tokens/s, "
              f"peak {med('trl', 'peak_mb'):.0f} MB")
        ratios = " / ".join(f"{x:.2f}" for x in res["speedup_vs_trl"])
        print(f"  r1lab is {res['median_speedup_vs_trl']:.2f}x faster per step than TRL (median; runs: {ratios})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["r1lab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/grpo.json"))
    parser.add_argument("--threads", type=int, default=WORKLOAD["threads"],
                        help=f"torch/OpenMP threads of both workers (default {WORKLOAD['threads']}); "
                             "on a shared machine pin the run, e.g. taskset -c 1 ... --threads 1")
    parser.add_argument("--template", nargs="+", choices=list(TEMPLATES), default=list(TEMPLATES),
                        help="the workloads' prompts: " + "; ".join(f"{k}: {v}" for k, v in TEMPLATES.items()))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each framework per workload (default 3)")
    parser.add_argument("--steps", type=int, default=WORKLOAD["steps"],
                        help=f"GRPO steps per run, the first a warm-up (default {WORKLOAD['steps']})")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 (the first is a warm-up) and --repeats >= 1")
    base = {**WORKLOAD, "threads": args.threads, "steps": args.steps}
    if args.worker:
        workload = {**base, "template": args.template[0]}
        result = (run_r1lab if args.worker == "r1lab" else run_trl)(args.model, workload)
        print(json.dumps(result))
        return result

    have_trl = not args.no_trl and importlib.util.find_spec("trl") is not None
    if not have_trl and not args.no_trl:
        print("trl is not installed (pip install -e '.[bench]'): no comparison")
    print("workload: " + ", ".join(f"{k}={v}" for k, v in base.items() if k != "template") +
          f"; {args.repeats} run(s) of each framework per template", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(_tiny_export(Path(tmp) / "tiny"))
        for name in args.template:
            results[name] = compare(model_dir, {**base, "template": name}, args.repeats, have_trl)
            _report(name, results[name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
