"""Methods side by side over seeds: ``python -m r1lab.compare <folder> ppo grpo rloo``.

The runs of a method are the folders ``<method>_s<seed>`` (a pipeline whose rounds are seeds, e.g.
``conf/pipeline/ppo_vs_grpo.yaml``). Per method, over its seeds: held-out test accuracy (mean ± the
standard error across seeds), the final training reward, seconds per step, the peak memory and the
parameters held in memory (policy, reference, critic), all read from each run's ``metrics.json``,
``stage.json`` and TensorBoard scalars; and two curves, validation accuracy against sampled
completions and against wall-clock time (mean over seeds). Writes ``comparison.md`` and
``comparison.png`` into the folder and returns the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from r1lab.report import scalars


def runs_of(root: Path, method: str) -> list[Path]:
    """The finished runs ``<method>_s<seed>`` (with metrics.json), by seed."""
    pattern = re.compile(rf"^{re.escape(method)}_s(\d+)$")
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := pattern.match(p.name))] if root.is_dir() else []
    return [p for _, p in sorted(found) if (p / "metrics.json").is_file()]


def completions_per_step(run: Path) -> int:
    """Completions sampled per optimiser step: prompts × G / (μ · mini-batches), from the run's config."""
    import yaml

    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    module = cfg["module"]
    per_rollout = int(cfg["data"]["batch_size"]) * int(module["group_size"])
    return max(1, per_rollout // (int(module.get("num_iterations", 1)) * int(module.get("mini_batches", 1))))


def mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def summarise(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    steps = scalars(run, "train/step_s")
    stage = json.loads((run / "stage.json").read_text()) if (run / "stage.json").is_file() else {}
    return {
        "accuracy": metrics.get("test/accuracy"), "pass@1": metrics.get("test/pass@1"),
        "reward": metrics.get("train/reward"),
        "step_s": statistics.fmean(v for _, v in steps) if steps else None,
        "peak_gb": max((v for _, v in scalars(run, "train/peak_memory_gb")), default=None),
        "params": metrics.get("train/params_in_memory"), "seconds": stage.get("seconds"),
    }


def _cell(values: list, fmt: str, spread: bool = True) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, se = mean_se(values)
    if not spread or se != se:  # one seed: no spread to show
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(se)}"


def comparison_table(root: Path, methods: list[str]) -> tuple[str, dict[str, list[dict]]]:
    rows = {m: [summarise(r) for r in runs_of(root, m)] for m in methods}
    header = ["method", "seeds", "test accuracy", "pass@1", "train reward", "s/step", "peak memory (GB)",
              "params in memory", "run time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, summaries in rows.items():
        if not summaries:
            continue

        def col(key, summaries=summaries):
            return [s[key] for s in summaries]

        params = [p for p in col("params") if p is not None]
        lines.append("| " + " | ".join([
            method, str(len(summaries)), _cell(col("accuracy"), "{:.3f}"), _cell(col("pass@1"), "{:.3f}"),
            _cell(col("reward"), "{:.3f}"), _cell(col("step_s"), "{:.2f}"), _cell(col("peak_gb"), "{:.2f}"),
            f"{max(params) / 1e6:.2f}M" if params else "–", _cell(col("seconds"), "{:.0f}", spread=False),
        ]) + " |")
    return "\n".join(lines), rows


def curves(run: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Validation accuracy against sampled completions and against wall-clock seconds of training."""
    per_step = completions_per_step(run)
    elapsed, total = {}, 0.0
    for step, seconds in scalars(run, "train/step_s"):
        total += seconds
        elapsed[step] = total
    val = scalars(run, "val/accuracy")
    by_samples = [(step * per_step, acc) for step, acc in val]
    by_time = [(elapsed.get(step, elapsed.get(step - 1, float("nan"))), acc) for step, acc in val]
    return by_samples, by_time


def plot(root: Path, methods: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    drawn = False
    for method in methods:
        runs = runs_of(root, method)
        if not runs:
            continue
        per_run = [curves(r) for r in runs]
        for ax, which in zip(axes, range(2)):
            series = [c[which] for c in per_run if c[which]]
            if not series:
                continue
            n = min(len(s) for s in series)
            xs = [statistics.fmean(s[i][0] for s in series) for i in range(n)]
            ys = [statistics.fmean(s[i][1] for s in series) for i in range(n)]
            ax.plot(xs, ys, marker="o", label=f"{method} (n={len(series)})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set_xlabel("sampled completions")
    axes[1].set_xlabel("training time (s)")
    for ax in axes:
        ax.set_ylabel("validation accuracy")
    axes[0].legend()
    fig.tight_layout()
    path = out / "comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(root: Path, methods: list[str]) -> str:
    root = Path(root)
    table, _ = comparison_table(root, methods)
    picture = plot(root, methods, root)
    body = ["# Comparison", "", f"Folder: `{root}`. Mean ± standard error over seeds (test split: each run's "
            "final weights).", "", table, ""]
    if picture is not None:
        body.append(f"![comparison]({picture.name})")
    (root / "comparison.md").write_text("\n".join(body) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder holding <method>_s<seed>/ runs")
    parser.add_argument("methods", nargs="+", help="method names (the runs' folder prefixes)")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        parser.error(f"folder: {args.folder} does not exist")
    print(write_comparison(Path(args.folder), args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
