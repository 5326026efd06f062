"""Methods side by side over seeds: ``python -m r1lab.compare <folder> ppo grpo rloo [--baseline NAME]``.

The runs of a method are the folders ``<method>_s<seed>`` (a pipeline whose rounds are seeds, e.g.
``conf/pipeline/ppo_vs_grpo.yaml``). Per method, over its seeds: held-out test accuracy (mean ± the
standard error across seeds), the share of fully correct chains of thought on the test split (where
the runs report ``test/chain_correct``), the final training reward, the completions actually sampled
(with dynamic sampling the logged ``train/extra_rollouts`` of every step added), seconds per step,
the peak memory and the parameters held in memory (policy, reference, critic), all read from each
run's ``metrics.json``, ``stage.json`` and TensorBoard scalars. With a ``baseline`` (the folder of a
run that tested the methods' common start on the same test split), the test-accuracy gain over it
per 1k sampled completions and per minute of training (``train/train_seconds``). Curves (mean
over seeds): validation accuracy against sampled completions and against training time, and the
validation share of fully correct chains where logged. Writes ``comparison.md`` and
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
    """Completions trained per optimiser step: prompts × G / (μ · mini-batches), from the run's config
    (with dynamic sampling the prompts are ``module.dynamic_sampling_prompts``, not the pool's
    ``data.batch_size``; what it samples beyond them is ``train/extra_rollouts``, see ``sampled``)."""
    import yaml

    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    module = cfg["module"]
    prompts = module["dynamic_sampling_prompts"] if module.get("dynamic_sampling") else cfg["data"]["batch_size"]
    per_rollout = int(prompts) * int(module["group_size"])
    return max(1, per_rollout // (int(module.get("num_iterations", 1)) * int(module.get("mini_batches", 1))))


def sampled(run: Path) -> list[tuple[int, float]]:
    """(step, completions sampled up to and including it) at every logged training step: the run's own
    running total (``train/completions_sampled``, which counts every step whatever the logging
    interval), or, in runs that did not log it, the trained completions per step plus the step's
    ``train/extra_rollouts``, summed over the logged steps (exact only when every step was logged)."""
    total = scalars(run, "train/completions_sampled")
    if total:
        return total
    per_step = completions_per_step(run)
    extra = dict(scalars(run, "train/extra_rollouts"))
    out, total = [], 0.0
    for step, _ in scalars(run, "train/step_s"):
        total += per_step + extra.get(step, 0.0)
        out.append((step, total))
    return out


def _upto(series: list[tuple[int, float]], step: int) -> float:
    """The value of a cumulative per-step series at the last step <= ``step`` (0 before the first)."""
    return next((v for s, v in reversed(series) if s <= step), 0.0)


def mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def summarise(run: Path, start_accuracy: float | None = None) -> dict:
    """A run's numbers; with ``start_accuracy`` (the common start's test accuracy) its gain over it per
    1k sampled completions and per minute of training."""
    metrics = json.loads((run / "metrics.json").read_text())
    steps = scalars(run, "train/step_s")
    stage = json.loads((run / "stage.json").read_text()) if (run / "stage.json").is_file() else {}
    drawn = sampled(run)[-1][1] if steps else None
    train_s = training_time(run)[-1][1] if steps else None
    accuracy = metrics.get("test/accuracy")
    gain = None if accuracy is None or start_accuracy is None else accuracy - start_accuracy
    return {
        "accuracy": accuracy, "pass@1": metrics.get("test/pass@1"), "chain": metrics.get("test/chain_correct"),
        "reward": metrics.get("train/reward"), "sampled": drawn, "train_s": train_s,
        "gain_per_1k": gain / drawn * 1000 if gain is not None and drawn else None,
        "gain_per_min": gain / train_s * 60 if gain is not None and train_s else None,
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


def _start(root: Path, baseline: str | None) -> dict:
    """The baseline run's test metrics (``metrics.json``), or {} without one."""
    path = root / baseline / "metrics.json" if baseline else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def comparison_table(root: Path, methods: list[str], baseline: str | None = None
                     ) -> tuple[str, dict[str, list[dict]]]:
    """The Markdown table and each method's run summaries. Columns whose data no run has (chains of
    thought, the gains without a baseline) are left out; the baseline, when given, is the first row."""
    start = _start(root, baseline)
    rows = {m: [summarise(r, start.get("test/accuracy")) for r in runs_of(root, m)] for m in methods}
    every = [s for summaries in rows.values() for s in summaries]

    def has(key):
        return any(s[key] is not None for s in every)

    def params(values):
        values = [p for p in values if p is not None]
        return f"{max(values) / 1e6:.2f}M" if values else "–"

    # header, summary key, cell format (a function of the values), shown
    columns = [
        ("test accuracy", "accuracy", lambda v: _cell(v, "{:.3f}"), True),
        ("fully correct CoT (test)", "chain", lambda v: _cell(v, "{:.3f}"), has("chain")),
        ("pass@1", "pass@1", lambda v: _cell(v, "{:.3f}"), True),
        ("train reward", "reward", lambda v: _cell(v, "{:.3f}"), True),
        ("sampled completions", "sampled", lambda v: _cell(v, "{:.0f}", spread=False), has("sampled")),
        ("Δ accuracy / 1k completions", "gain_per_1k", lambda v: _cell(v, "{:.4f}"), has("gain_per_1k")),
        ("Δ accuracy / training min", "gain_per_min", lambda v: _cell(v, "{:.3f}"), has("gain_per_min")),
        ("s/step", "step_s", lambda v: _cell(v, "{:.2f}"), True),
        ("peak memory (GB)", "peak_gb", lambda v: _cell(v, "{:.2f}"), True),
        ("params in memory", "params", params, True),
        ("run time (s)", "seconds", lambda v: _cell(v, "{:.0f}", spread=False), True),
    ]
    columns = [c for c in columns if c[3]]
    header = ["method", "seeds", *(c[0] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if start:
        first = {"accuracy": "test/accuracy", "chain": "test/chain_correct", "pass@1": "test/pass@1"}
        cells = [_cell([start.get(first[key])], "{:.3f}") if key in first else "–" for _, key, _, _ in columns]
        lines.append("| " + " | ".join([f"{baseline} (start)", "–", *cells]) + " |")
    for method, summaries in rows.items():
        if not summaries:
            continue
        cells = [fmt([s[key] for s in summaries]) for _, key, fmt, _ in columns]
        lines.append("| " + " | ".join([method, str(len(summaries)), *cells]) + " |")
    return "\n".join(lines), rows


def training_time(run: Path) -> list[tuple[int, float]]:
    """(step, seconds of training up to and including it): the run's running total
    (``train/train_seconds``), or the logged ``train/step_s`` summed (exact when every step was logged)."""
    total = scalars(run, "train/train_seconds")
    if total:
        return total
    elapsed, seconds = [], 0.0
    for step, s in scalars(run, "train/step_s"):
        seconds += s
        elapsed.append((step, seconds))
    return elapsed


def curves(run: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Validation accuracy against sampled completions and against wall-clock seconds of training. A
    validation at step s comes after the training steps logged at steps <= s."""
    drawn, elapsed = sampled(run), training_time(run)
    val = scalars(run, "val/accuracy")
    return [(_upto(drawn, step), acc) for step, acc in val], [(_upto(elapsed, step), acc) for step, acc in val]


def chain_curve(run: Path) -> list[tuple[float, float]]:
    """The validation share of fully correct chains of thought against sampled completions ([] when
    the run did not log ``val/chain_correct``)."""
    drawn = sampled(run)
    return [(_upto(drawn, step), share) for step, share in scalars(run, "val/chain_correct")]


PANELS = (("sampled completions", "validation accuracy"), ("training time (s)", "validation accuracy"),
          ("sampled completions", "fully correct CoT (validation)"))


def plot(root: Path, methods: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_method = {m: [(*curves(r), chain_curve(r)) for r in runs_of(root, m)] for m in methods}
    shown = [i for i in range(len(PANELS)) if i < 2 or any(c[i] for runs in per_method.values() for c in runs)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.4), squeeze=False)
    drawn = False
    for method, per_run in per_method.items():
        for ax, which in zip(axes[0], shown):
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
    for ax, which in zip(axes[0], shown):
        ax.set_xlabel(PANELS[which][0])
        ax.set_ylabel(PANELS[which][1])
    axes[0][0].legend()
    fig.tight_layout()
    path = out / "comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(root: Path, methods: list[str], baseline: str | None = None) -> str:
    root = Path(root)
    table, _ = comparison_table(root, methods, baseline)
    picture = plot(root, methods, root)
    body = ["# Comparison", "", f"Folder: `{root}`. Mean ± standard error over seeds (test split: each run's "
            "final weights)." + (f" Δ accuracy: test accuracy minus that of `{baseline}`, the common start."
                                 if _start(root, baseline) else ""), "", table, ""]
    if picture is not None:
        body.append(f"![comparison]({picture.name})")
    (root / "comparison.md").write_text("\n".join(body) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder holding <method>_s<seed>/ runs")
    parser.add_argument("methods", nargs="+", help="method names (the runs' folder prefixes)")
    parser.add_argument("--baseline", help="the folder (in <folder>) of the common start's test run: adds the gains")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        parser.error(f"folder: {args.folder} does not exist")
    if args.baseline and not (Path(args.folder) / args.baseline / "metrics.json").is_file():
        parser.error(f"--baseline: {Path(args.folder) / args.baseline / 'metrics.json'} does not exist")
    print(write_comparison(Path(args.folder), args.methods, args.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
