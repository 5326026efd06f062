"""Micro-benchmark of the code sandbox: per-program latency and a GRPO-sized batch.

    python -m r1lab.rewards.sandbox.bench [--runs 40] [--batch 16] [--threads 4]

Prints the kernel layers in force, the median and 10th/90th percentile wall time of scoring one
correct program (sequentially, warm pool), and the wall time of scoring a batch of code
completions (half right, half wrong) through RewardSet on `--threads` threads, as the grpo stage
does. Run it with OMP_NUM_THREADS=1 beside a training job to see what scoring costs there.
"""

from __future__ import annotations

import argparse
import statistics
import time

TESTS = [[[0], 1], [[1], 4], [[2], 7], [[5], 16], [[9], 28]]
RIGHT = "<think> multiply x by 3 then add 1 </think> <answer> def f(x): return x*3+1 </answer>"
WRONG = "<think> guess </think> <answer> def f(x): return x*3 </answer>"


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.1), pick(0.9)


def bench(run_sandboxed, code_reward, runs: int = 40, batch: int = 16, threads: int = 4) -> dict[str, float]:
    """Seconds per program (median, p10, p90) and per batch (median of 5) for these functions."""
    from r1lab.rewards import RewardSet

    reference = {"task": "code", "tests": TESTS}
    assert code_reward("", RIGHT, reference) == 1.0  # warm: starts the zygotes, probes the kernel
    single = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_sandboxed("def f(x): return x*3+1", TESTS)
        single.append(time.perf_counter() - start)
        assert result.passed == len(TESTS), result
    rewards = RewardSet({"code": code_reward}, max_workers=threads)
    completions = [RIGHT if i % 2 == 0 else WRONG for i in range(batch)]
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        total, _ = rewards.score([""] * batch, completions, [reference] * batch)
        batches.append(time.perf_counter() - start)
        assert total.tolist() == [1.0 if i % 2 == 0 else 0.0 for i in range(batch)]
    median, p10, p90 = percentiles(single)
    return {"program_median_s": median, "program_p10_s": p10, "program_p90_s": p90,
            "batch_median_s": statistics.median(batches), "batch_min_s": min(batches)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    from r1lab.rewards.code import code_reward, run_sandboxed, sandbox_guards

    print(sandbox_guards().report())
    numbers = bench(run_sandboxed, code_reward, args.runs, args.batch, args.threads)
    print(
        f"one program: median {1e3 * numbers['program_median_s']:.1f} ms "
        f"(p10 {1e3 * numbers['program_p10_s']:.1f}, p90 {1e3 * numbers['program_p90_s']:.1f})\n"
        f"batch of {args.batch} on {args.threads} threads: median {1e3 * numbers['batch_median_s']:.0f} ms "
        f"(min {1e3 * numbers['batch_min_s']:.0f})"
    )


if __name__ == "__main__":
    main()
