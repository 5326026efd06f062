"""Summarise a Hydra multirun: ``python -m r1lab.bench.sweep_summary outputs/grpo/multiruns/<time>``.

One row per run (its overrides, from ``.hydra/overrides.yaml``) with its final metrics from
``metrics.json``; printed as Markdown and written to ``<sweep>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

DEFAULT_METRICS = ("test/accuracy", "test/pass@1", "val/accuracy", "train/kl", "train/reward", "test/length")


def summarise(sweep: Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> str:
    runs = []
    for run in sorted(p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        values = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        runs.append(([o for o in overrides if not o.startswith(("stage=", "hydra"))], values))
    if not runs:
        raise FileNotFoundError(f"{sweep}: no runs of a Hydra multirun here (no */.hydra/overrides.yaml)")
    # overrides every run shares are said once, above the table; a row names what sets its run apart
    shared = [o for o in runs[0][0] if all(o in overrides for overrides, _ in runs)] if len(runs) > 1 else []
    rows = [(", ".join(o for o in overrides if o not in shared), values) for overrides, values in runs]
    lines = [f"All runs: {', '.join(shared)}", ""] if shared else []
    lines += ["| run | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, values in rows:
        cells = ["–" if m not in values else f"{values[m]:.3f}" for m in metrics]
        lines.append(f"| {name or '(defaults)'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latest_sweep(stage_dir: Path) -> Path:
    sweeps = sorted((stage_dir / "multiruns").glob("*"))
    if not sweeps:
        raise FileNotFoundError(f"{stage_dir}/multiruns: no sweep yet")
    return sweeps[-1]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder, or a stage folder (its latest sweep)")
    parser.add_argument("--metrics", nargs="*", default=list(DEFAULT_METRICS))
    args = parser.parse_args(argv)
    sweep = args.sweep if (args.sweep.name != "multiruns" and not (args.sweep / "multiruns").is_dir()) \
        else latest_sweep(args.sweep if (args.sweep / "multiruns").is_dir() else args.sweep.parent)
    table = summarise(sweep, tuple(args.metrics))
    (sweep / "summary.md").write_text(table + "\n")
    print(f"{sweep}\n\n{table}")
    return table


if __name__ == "__main__":
    main()
