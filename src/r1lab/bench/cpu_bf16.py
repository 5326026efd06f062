"""bf16 autocast against fp32 on the CPU: ``python -m r1lab.bench.cpu_bf16`` (``make bench-bf16``).

The two parts of a GRPO step that cost time, each timed in fp32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (what ``trainer.precision=bf16-mixed`` turns on):

- **decode**: the rollout sampler (``r1lab.generation.sample``) on ``--rows`` left-padded chat prompts
  for ``--new-tokens`` tokens, without EOS (every row runs the whole length);
- **train pass**: the fused per-token log-probs (``sequence_logprobs``) of those sequences and their
  backward, as GRPO's loss runs it.

Each figure is the median of ``--repeats`` timings after one warm-up. The log-probs in the loss stay
fp32 either way (the fused output layer casts its chunks to fp32 before the log-softmax); the bench
also prints how far the bf16 log-probs of the same tokens are from the fp32 ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path


def _median_seconds(fn, arg, repeats: int) -> float:
    fn(arg)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(model_dir: str, rows: int, new_tokens: int, repeats: int, threads: int) -> dict:
    import torch

    from r1lab.bench.grpo_workers import _prompts
    from r1lab.data.collate import Tokenized, left_pad
    from r1lab.generation import sample, sequence_logprobs
    from r1lab.models import Backbone

    torch.set_num_threads(threads)
    backbone = Backbone(name_or_path=model_dir, dtype="float32")
    model = backbone.build_model()
    pad = backbone.tokenizer.pad_token_id
    tok = Tokenized(backbone.tokenizer, "chat", 256, new_tokens, "")
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in _prompts(None, rows)], pad)

    def autocast(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def decode(bf16: bool):
        with torch.no_grad(), autocast(bf16):
            return sample(model.eval(), ids, mask, max_new_tokens=new_tokens, eos_id=-1, pad_id=pad,
                          generator=torch.Generator().manual_seed(0))

    roll = decode(False)

    def train_pass(bf16: bool):
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast(bf16):
            logp = sequence_logprobs(model, ids, mask, roll.completion_ids, roll.completion_mask)
        logp.sum().backward()
        return logp.detach()

    out = {"rows": rows, "new_tokens": new_tokens, "threads": threads, "repeats": repeats,
           "parameters": sum(p.numel() for p in model.parameters())}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        out[f"decode_s_{name}"] = _median_seconds(decode, bf16, repeats)
        out[f"train_pass_s_{name}"] = _median_seconds(train_pass, bf16, repeats)
    ref, low = train_pass(False), train_pass(True)
    real = roll.completion_mask.bool()
    diff = (ref - low)[real].abs()
    out.update(logp_dtype_bf16=str(low.dtype), logp_abs_diff_mean=float(diff.mean()),
               logp_abs_diff_max=float(diff.max()))
    for part in ("decode", "train_pass"):
        out[f"{part}_speedup_bf16"] = out[f"{part}_s_fp32"] / out[f"{part}_s_bf16"]
    return out


def main(argv: list[str] | None = None) -> dict:
    from r1lab.bench.grpo_bench import model_folder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2_135m", help="tiny | smollm2_135m | a Hugging Face folder")
    p.add_argument("--rows", type=int, default=16, help="sequences (default 16)")
    p.add_argument("--new-tokens", type=int, default=64, help="completion length (default 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="outputs/bench/cpu_bf16.json")
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = run(model_folder(args.backbone, Path(tmp)), args.rows, args.new_tokens, args.repeats, args.threads)
    res["backbone"] = args.backbone
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{args.backbone}: {args.rows} rows x {args.new_tokens} new tokens, {args.threads} thread(s), "
          f"median of {args.repeats}")
    for part in ("decode", "train_pass"):
        print(f"  {part:10s} fp32 {res[f'{part}_s_fp32']:.3f} s   bf16 autocast {res[f'{part}_s_bf16']:.3f} s   "
              f"fp32 / bf16 = {res[f'{part}_speedup_bf16']:.2f}x")
    print(f"  log-probs under autocast are {res['logp_dtype_bf16']}; |bf16 - fp32| mean "
          f"{res['logp_abs_diff_mean']:.2e}, max {res['logp_abs_diff_max']:.2e}")
    return res


if __name__ == "__main__":
    main()
