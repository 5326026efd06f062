"""The pipeline's results: one Markdown table over every stage's model, and plots of the RL stages.

Rows come from each stage's ``metrics.json`` (its final weights on the shared held-out test split),
its export (parameter count) and ``stage.json`` (wall-clock time); the gains from each stage's
``test_predictions.jsonl`` and the stage it started from (its backbone's ``<stage>/hf``). Curves come
from the TensorBoard event files in each stage's folder.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

COLUMNS = [
    ("accuracy", "test/accuracy", "{:.3f}"),
    ("pass@1", "test/pass@1", "{:.3f}"),
    ("maj@k", "test/maj@k", "{:.3f}"),
    ("format", "test/format", "{:.3f}"),
    ("language", "test/language", "{:.3f}"),
    ("length", "test/length", "{:.1f}"),
]
CURVES = [("train/reward", "reward"), ("train/accuracy", "accuracy"), ("train/kl", "KL"),
          ("train/completion_length", "completion length")]
RM_RAW = "train/reward/reward_model_raw"  # the neural reward's raw score, logged by GRPO (stage grpo_rm)


def parameter_count(export: Path) -> int | None:
    """Parameters in a Hugging Face export, read from the safetensors headers (no model built)."""
    files = sorted(export.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                total += _numel(st.get_slice(key).get_shape())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = folder / "tb"
    if not tb.exists():
        return []
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def is_reward_model(folder: Path) -> bool:
    from r1lab.rm.model import reward_kind

    return reward_kind(folder / "hf") is not None


def reward_model_lines(root: Path, stages: list[str]) -> list[str]:
    lines = []
    for name in stages:
        folder = root / name
        if is_reward_model(folder) and (folder / "metrics.json").is_file():
            m = json.loads((folder / "metrics.json").read_text())
            acc = m.get("test/accuracy", m.get("val/accuracy"))
            margin = m.get("test/margin", m.get("val/margin"))
            text = f"Reward model `{name}`: held-out pair accuracy {acc:.3f}" if acc is not None else f"`{name}`"
            lines.append(text + (f", mean margin {margin:.3f}." if margin is not None else "."))
    return lines


def results_table(root: Path, stages: list[str]) -> tuple[str, list[dict]]:
    rows = []
    for name in stages:
        folder = root / name
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file() or is_reward_model(folder):
            continue
        metrics = json.loads(metrics_file.read_text())
        if not any(key in metrics for _, key, _ in COLUMNS):
            continue
        info = json.loads((folder / "stage.json").read_text()) if (folder / "stage.json").is_file() else {}
        row = {"stage": name, "params": parameter_count(folder / "hf"), "seconds": info.get("seconds")}
        row |= {col: metrics.get(key) for col, key, _ in COLUMNS}
        rows.append(row)
    header = ["stage", *[c for c, _, _ in COLUMNS], "params", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["stage"]]
        cells += ["–" if row[c] is None else fmt.format(row[c]) for c, _, fmt in COLUMNS]
        cells += ["–" if row["params"] is None else f"{row['params'] / 1e6:.2f}M"]
        cells += ["–" if row["seconds"] is None else f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def plot_curves(root: Path, stages: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rl = [s for s in stages if scalars(root / s, "train/reward")]
    if rl:
        fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
        for ax, (tag, title) in zip(axes, CURVES):
            for s in rl:
                points = scalars(root / s, tag)
                if points:
                    ax.plot(*zip(*points), label=s)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
        axes[0].legend()
        fig.tight_layout()
        path = out / "rl_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    rm = [s for s in stages if is_reward_model(root / s)]
    raw = {s: points for s in rl if (points := scalars(root / s, RM_RAW))}  # RL stages scored by the RM
    if rm:
        fig, axes = plt.subplots(1, 2 if raw else 1, figsize=(4.5 * (2 if raw else 1), 3.4), squeeze=False)
        ax = axes[0][0]
        for s in rm:
            for tag in ("train/accuracy", "val/accuracy"):
                points = scalars(root / s, tag)
                if points:
                    ax.plot(*zip(*points), marker="o" if tag.startswith("val") else None, label=f"{s} {tag}")
        ax.set_title("reward model pair accuracy")
        ax.set_xlabel("step")
        ax.legend()
        if raw:
            ax = axes[0][1]
            for s, points in raw.items():
                ax.plot(*zip(*points), label=s)
            ax.set_title("raw reward-model score during RL")
            ax.set_xlabel("optimizer step")
            ax.legend()
        fig.tight_layout()
        path = out / "reward_model.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def predictions(folder: Path) -> dict[str, float] | None:
    """A stage's greedy test accuracy per prompt (``test_predictions.jsonl``), or None."""
    path = folder / "test_predictions.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["prompt"]: float(row["accuracy"]) for row in rows}


def started_from(folder: Path, stages: list[str]) -> str | None:
    """The earlier stage whose export this stage's backbone loaded (from its Hydra config), or None."""
    config = folder / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    name_or_path = ((yaml.safe_load(config.read_text()) or {}).get("backbone") or {}).get("name_or_path")
    if not name_or_path:
        return None
    parts = Path(str(name_or_path)).parts
    source = parts[-2] if len(parts) >= 2 and parts[-1] == "hf" else None
    return source if source in stages and source != folder.name else None


def paired_gain(after: dict[str, float], before: dict[str, float]) -> tuple[float, float, int]:
    """Mean accuracy change over the prompts both stages answered, its standard error, and n."""
    diffs = [after[p] - before[p] for p in sorted(set(after) & set(before))]
    n = len(diffs)
    if n < 2:
        return (diffs[0] if diffs else float("nan")), float("nan"), n
    return statistics.fmean(diffs), statistics.stdev(diffs) / n ** 0.5, n


def gain_lines(root: Path, stages: list[str], compare_to: dict[str, list[str]] | None = None) -> list[str]:
    """Each stage's test accuracy change over the stage it started from, and over the stages its pipeline
    entry's ``compare_to`` names (e.g. a cold start trained from a hub model, against the zero-shot stage),
    paired by prompt."""
    rows = []
    for name in stages:
        after = predictions(root / name)
        if after is None:
            continue
        acc = sum(after.values()) / len(after)
        se_acc = (acc * (1 - acc) / len(after)) ** 0.5
        source = started_from(root / name, stages)
        for other in dict.fromkeys([*([source] if source else []), *(compare_to or {}).get(name, [])]):
            before = predictions(root / other)
            if before is None:
                continue
            gain, se, n = paired_gain(after, before)
            label = other if other == source else f"{other} (compared)"
            rows.append(f"| {name} | {label} | {acc:.3f} ± {se_acc:.3f} | {gain:+.3f} ± {se:.3f} | {n} |")
    if not rows:
        return []
    return ["Test accuracy gained over the stage each started from, and over the stages its pipeline entry "
            "compares it to (paired by prompt; ± one standard error):",
            "", "| stage | over | accuracy ± s.e. | gain ± s.e. | prompts |", "|---|---|---|---|---|", *rows, ""]


def stage_summaries(root: Path, stages: list[str]) -> list[str]:
    """The ``summary.md`` that run stages write (e.g. ``rm_score``), in stage order."""
    return [(root / name / "summary.md").read_text().rstrip() + "\n" for name in stages
            if (root / name / "summary.md").is_file()]


def write_report(root: Path, stages: list[str], compare_to: dict[str, list[str]] | None = None) -> str:
    """Write results.md and the plots into the pipeline folder; return the table."""
    root = Path(root)
    table, _ = results_table(root, stages)
    plots = plot_curves(root, stages, root)
    table = "\n".join([table, "", *gain_lines(root, stages, compare_to), *reward_model_lines(root, stages), "",
                       *stage_summaries(root, stages)]).rstrip()
    where = f"Pipeline folder: `{root}`. Test split: each stage's exported weights (its final ones, or its best)."
    body = ["# Results", "", where, "", table, ""]
    body += [f"![{p.stem}]({p.name})" for p in plots]
    (root / "results.md").write_text("\n".join(body) + "\n")
    return table
