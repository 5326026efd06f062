"""GRPO step benchmark: ``python -m r1lab.bench.grpo_bench`` (``make bench-grpo``).

A fixed workload (below), on each of two prompt sets (``TEMPLATES``: the long R1-Zero prompts of the
r1_zero stage and the short chat prompts of the grpo stage), runs in its own process through r1lab's
GRPO module and, when ``trl`` is installed (the ``bench`` extra), through TRL's ``GRPOTrainer`` in a
second process with the same model, prompts, G, lengths, β, fp32 and thread count, and without
gradient checkpointing (TRL turns it on by default; r1lab does not use it). Each worker prints
seconds per step (median after a warm-up step), sampled tokens per second, peak resident memory and,
for r1lab, the share of the step spent in the rollout (decode and reference forward); r1lab's step is
also compared with the bare model work it contains (a cached decode of the same length, one policy
forward+backward and one reference forward over the same sequences), and the training pass's model
FLOPs utilisation (6 × parameters × trained tokens / its time, against the float32 matrix-product
throughput measured in the same worker). Each framework runs ``--repeats`` times per prompt set,
alternating which goes first (the machine's speed drifts); the speed-up printed is the median of the
paired ratios.

``--backbone`` picks the model: ``tiny`` (the tiny pipeline's 0.85M-parameter Llama, seeded random
weights; per-op overhead dominates) or ``smollm2_135m`` (SmolLM2-135M-Instruct from the ``real``
extra's GGUF, a 49,152-token vocabulary; arithmetic dominates), or any Hugging Face folder. With a
real model the benchmark also measures the peak memory of one training pass: r1lab's fused log-prob
pass against a plain forward over the full (B, T, V) logits, each in its own process.

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
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from r1lab.bench.grpo_workers import _tiny_export, run_memory, run_r1lab, run_trl
from r1lab.generation.engines import ENGINES

WORKLOAD = {
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 64,
    "beta": 0.04,
    "kl_estimator": "k3",
    "lr": 1e-5,
    "steps": 6,  # the first is a warm-up and is not counted
    "bare_repeats": 3,  # timings of the bare model work (median)
    "threads": 2,
    "template": "r1_zero",
}

# The real model's workload: the step the issue of fitting SmolLM2 on a CPU is about (8 prompts x G 8 x
# up to 128 tokens); two timed steps after a warm-up, one run each by default (a step takes minutes).
# The whole step's 64 sequences in one forward+backward hold ~16 GB of activations on SmolLM2 at 128
# tokens (measured: the r1lab worker was killed for memory on a 24 GB machine), so both frameworks
# train it in micro-batches of 16 sequences (gradient accumulation; r1lab's module.micro_batch_size,
# TRL's per_device_train_batch_size with gradient_accumulation_steps).
# One timing of the bare model work instead of three (each is minutes).
REAL_WORKLOAD = {**WORKLOAD, "max_new_tokens": 128, "steps": 3, "micro_batch_size": 16, "bare_repeats": 1}
BACKBONES = ("tiny", "smollm2_135m")

# The two prompt sets the workload runs on, the two GRPO stages of the tiny pipeline.
TEMPLATES = {
    "r1_zero": "the r1_zero stage's prompts: the paper's R1-Zero template, 92-102 tokens",
    "chat": "the grpo stage's prompts: the chat template without a system prompt, 11-21 tokens",
}


def _worker(kind: str, model_dir: str, w: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(w["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "r1lab.bench.grpo_bench", "--worker", kind, "--model", model_dir,
                           "--workload", json.dumps(w)], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare(model_dir: str, w: dict, repeats: int, have_trl: bool, engines: tuple[str, ...] = ("auto",)) -> dict:
    """``repeats`` runs of r1lab with each rollout engine and of TRL on one workload, alternating the order
    (the machine's speed drifts); the speed-ups are medians of paired ratios: TRL ÷ r1lab with the first
    engine, and each further engine's s/step ÷ the first engine's."""
    kinds = [f"r1lab:{e}" for e in engines] + (["trl"] if have_trl else [])
    runs: dict[str, list] = {kind: [] for kind in kinds}
    for i in range(repeats):
        for kind in (kinds if i % 2 == 0 else kinds[::-1]):
            if kind == "trl":
                runs[kind].append(_worker("trl", model_dir, w))
            else:
                runs[kind].append(_worker("r1lab", model_dir, {**w, "engine": kind.split(":", 1)[1]}))
    first = runs[kinds[0]]
    out = {"workload": w, "r1lab": first}
    if len(engines) > 1:
        out["engines"] = {e: runs[f"r1lab:{e}"] for e in engines}
        out["step_ratio_vs_" + engines[0]] = {
            e: statistics.median(r["step_s"] / f["step_s"] for r, f in zip(runs[f"r1lab:{e}"], first))
            for e in engines[1:]}
    if have_trl:
        out["trl"] = runs["trl"]
        out["speedup_vs_trl"] = [t["step_s"] / r["step_s"] for r, t in zip(first, runs["trl"])]
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
    print(f"         training pass: {r['trained_tokens']} tokens x {r['parameters'] / 1e6:.1f}M parameters "
          f"({r.get('trainable', r['parameters']) / 1e6:.2f}M trained), "
          f"MFU {100 * r['training_pass_mfu']:.0f}% of the measured {r['matmul_gflops']:.0f} GFLOP/s")
    for engine, engine_runs in res.get("engines", {}).items():
        ratio = res[next(k for k in res if k.startswith("step_ratio_vs_"))].get(engine)
        print(f"  engine {engine}: {statistics.median(x['step_s'] for x in engine_runs):.3f} s/step, "
              f"{statistics.median(x['tokens_per_s'] for x in engine_runs):.0f} sampled tokens/s, sampling "
              f"{100 * statistics.median(x['sample_share'] for x in engine_runs):.0f}% of the step"
              + (f", {ratio:.2f}x the first engine's s/step (median of paired runs)" if ratio else " (first)"))
    if "trl" in res:
        print(f"  trl:   {med('trl', 'step_s'):.3f} s/step, {med('trl', 'tokens_per_s'):.0f} sampled tokens/s, "
              f"peak {med('trl', 'peak_mb'):.0f} MB")
        ratios = " / ".join(f"{x:.2f}" for x in res["speedup_vs_trl"])
        print(f"  r1lab is {res['median_speedup_vs_trl']:.2f}x faster per step than TRL (median; runs: {ratios})")


def model_folder(backbone: str, tmp: Path) -> str:
    """The benchmarked model as a Hugging Face folder."""
    if backbone == "tiny":
        return str(_tiny_export(tmp / "tiny"))
    if backbone == "smollm2_135m":
        from r1lab.models.gguf import convert_gguf

        return str(convert_gguf("smollm2-135m-instruct"))
    if not (Path(backbone) / "config.json").is_file():
        raise SystemExit(f"--backbone: {backbone} is neither {' nor '.join(BACKBONES)} nor a model folder")
    return backbone


def memory(model_dir: str, w: dict) -> dict:
    """Peak memory of one training pass, fused and plain, each in a fresh process."""
    out = {mode: _worker(f"memory-{mode}", model_dir, w) for mode in ("fused", "plain")}
    print(f"  training pass over {out['fused']['shape']} completion tokens, vocabulary {out['fused']['vocab']}: "
          f"peak {out['fused']['pass_peak_mb']:.0f} MB fused ({out['fused']['pass_s']:.1f} s) against "
          f"{out['plain']['pass_peak_mb']:.0f} MB with full logits ({out['plain']['pass_s']:.1f} s)")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["r1lab", "trl", "memory-fused", "memory-plain"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="tiny",
                        help=f"{' | '.join(BACKBONES)} | a Hugging Face folder (default tiny)")
    parser.add_argument("--prompts-per-step", type=int, default=None, help="prompts per step (default 8)")
    parser.add_argument("--group-size", type=int, default=None, help="G, completions per prompt (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="completion length limit (default 64; 128 on a real model)")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per forward/backward in both frameworks (gradient accumulation; default "
                             "the whole step on the tiny model, 16 on a real one; 0 = the whole step)")
    parser.add_argument("--lora", type=int, default=0,
                        help="LoRA rank of both frameworks' policies (0 = full fine-tuning; r1lab's backbone.lora, "
                             "TRL's peft_config, the same target modules)")
    parser.add_argument("--engine", nargs="+", default=["auto"], choices=sorted(ENGINES),
                        help="r1lab's rollout engine(s) (rollout.engine; default auto = the static-KV decoder "
                             "where it applies); several form an engine axis of paired runs, the first is "
                             "compared with TRL; vllm needs the vLLM environment (make test-vllm builds it)")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/grpo.json"))
    parser.add_argument("--threads", type=int, default=WORKLOAD["threads"],
                        help=f"torch/OpenMP threads of both workers (default {WORKLOAD['threads']}); "
                             "on a shared machine pin the run, e.g. taskset -c 1 ... --threads 1")
    parser.add_argument("--template", nargs="+", choices=list(TEMPLATES), default=list(TEMPLATES),
                        help="the workloads' prompts: " + "; ".join(f"{k}: {v}" for k, v in TEMPLATES.items()))
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each framework per workload (default 3; 1 on a real model)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"GRPO steps per run, the first a warm-up (default {WORKLOAD['steps']}; "
                             f"{REAL_WORKLOAD['steps']} on a real model)")
    args = parser.parse_args(argv)
    if args.worker:
        w = json.loads(args.workload)
        if args.worker.startswith("memory-"):
            result = run_memory(args.model, w, args.worker.split("-", 1)[1])
        else:
            result = (run_r1lab if args.worker == "r1lab" else run_trl)(args.model, w)
        print(json.dumps(result))
        return result
    real = args.backbone != "tiny"
    base = {**(REAL_WORKLOAD if real else WORKLOAD), "threads": args.threads, "lora": args.lora}
    for key, value in (("steps", args.steps), ("prompts_per_step", args.prompts_per_step),
                       ("group_size", args.group_size), ("max_new_tokens", args.max_new_tokens)):
        if value is not None:
            base[key] = value
    if args.micro_batch_size is not None:
        base["micro_batch_size"] = args.micro_batch_size or None
    rows = base["prompts_per_step"] * base["group_size"]
    if base.get("micro_batch_size") and (base["micro_batch_size"] < 1 or rows % base["micro_batch_size"]):
        parser.error(f"--micro-batch-size must divide the step's {rows} sequences")
    repeats = args.repeats if args.repeats is not None else (1 if real else 3)
    if base["steps"] < 2 or repeats < 1:
        parser.error("--steps must be >= 2 (the first is a warm-up) and --repeats >= 1")

    have_trl = not args.no_trl and importlib.util.find_spec("trl") is not None
    if not have_trl and not args.no_trl:
        print("trl is not installed (pip install -e '.[bench]'): no comparison")
    print(f"backbone {args.backbone}; workload: " + ", ".join(f"{k}={v}" for k, v in base.items() if k != "template")
          + f"; {repeats} run(s) of each framework per template", flush=True)
    results = {"backbone": args.backbone, "engines": args.engine}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_folder(args.backbone, Path(tmp))
        for name in args.template:
            results[name] = compare(model_dir, {**base, "template": name}, repeats, have_trl, tuple(args.engine))
            _report(name, results[name])
        if real:
            results["memory"] = memory(model_dir, {**base, "template": args.template[0]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
