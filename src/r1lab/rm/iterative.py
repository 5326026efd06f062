"""Iterative RL with a reward model that keeps up with the policy (DeepSeekMath arXiv 2402.03300 §4.2,
Algorithm 1), as a loop over r1lab's own stages.

Each round:

1. ``grpo``: GRPO (stage=grpo_rm) from the current policy with the current reward model. The run
   starts from the policy's export with β > 0, so its reference model is that policy: the reference
   is reset every round, as Algorithm 1 does.
2. ``pairs``: fresh preference pairs ranked among samples of the new policy
   (``python -m r1lab.data.preferences sample``).
3. ``mix``: the reward model's training set = the fresh pairs + ``replay`` (10%) of all older pairs
   (``r1lab.data.preferences.replay_mix``); the held-out pairs at the file's end are fresh ones.
4. ``rm``: the reward model continues training from its previous export on that set (stage=rm).

    python -m r1lab.rm.iterative --rounds 2 --dry-run     # print the commands
    python -m r1lab.rm.iterative --rounds 2 --grpo-args "trainer.max_steps=50" --pairs-args="--k 4"

Every step writes under ``--out`` (``round<i>/grpo``, ``fresh.jsonl``, ``pairs.jsonl``, ``history.jsonl``,
``rm``); a step whose output already exists is skipped, so an interrupted loop resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from r1lab.data.preferences import replay_mix
from r1lab.rm.model import export_settings, reward_kind

PIPELINE = Path("outputs/pipeline/tiny")


@dataclass
class Step:
    kind: str  # grpo | pairs | mix | rm
    command: list[str] = field(default_factory=list)  # a subprocess's argv (empty for ``mix``)
    inputs: tuple[str, ...] = ()  # mix: (fresh pairs, older pairs)
    outputs: tuple[str, ...] = ()  # what exists once the step is done
    seed: int = 0


def plan(rounds: int, out: str | Path, policy: str, reward_model: str, pairs: str, seed: int = 0,
         python: str = sys.executable, grpo_args: tuple[str, ...] = (),
         pairs_args: tuple[str, ...] = (), rm_args: tuple[str, ...] = ()) -> list[Step]:
    """The steps of ``rounds`` rounds, starting from a policy export, a reward-model export and the
    pairs that reward model was trained on."""
    out, steps = Path(out), []
    train = [python, "-m", "r1lab.train", "callbacks.progress_bar=null"]
    rm_args = (*continuation_overrides(reward_model), *rm_args)
    for r in range(1, rounds + 1):
        d = out / f"round{r}"
        new_policy, fresh, mixed, history, new_rm = (d / "grpo" / "hf", d / "fresh.jsonl", d / "pairs.jsonl",
                                                     d / "history.jsonl", d / "rm" / "hf")
        steps += [
            Step("grpo", [*train, "stage=grpo_rm", f"backbone.name_or_path={policy}",
                          f"module.rewards.functions.reward_model.path={reward_model}",
                          f"hydra.run.dir={d / 'grpo'}", *grpo_args], outputs=(str(new_policy),)),
            Step("pairs", [python, "-m", "r1lab.data.preferences", "sample", "--policy", str(new_policy),
                           "--out", str(fresh), "--seed", str(seed + r), "--n-prompts", "4000", "--pairs-per-prompt",
                           "4", *pairs_args], outputs=(str(fresh),)),  # a strong policy is rarely wrong: many prompts
            Step("mix", inputs=(str(fresh), str(pairs)), outputs=(str(mixed), str(history)), seed=seed + r),
            Step("rm", [*train, "stage=rm", "backbone=hf", f"backbone.name_or_path={reward_model}",
                        f"data.source.path={mixed}", f"hydra.run.dir={d / 'rm'}", "callbacks.hf_export.weights=best",
                        *rm_args],
                 outputs=(str(new_rm),)),
        ]
        policy, reward_model, pairs = str(new_policy), str(new_rm), str(history)
    return steps


def continuation_overrides(reward_model: str | Path) -> list[str]:
    """The module overrides that continue a reward-model export as the kind it is (its recorded
    ``r1lab_reward.json``): nothing for a scalar head, ``module.kind=likelihood`` with its β, reduction
    and reference for a likelihood reward model."""
    if reward_kind(reward_model) != "likelihood":
        return []
    settings = export_settings(reward_model)
    reference = settings.get("reference")
    return ["module.kind=likelihood", f"module.beta={settings.get('beta', 1.0)}",
            f"module.reduction={settings.get('reduction', 'sum')}",
            f"module.reference={reference}" if reference else "module.reference=null"]


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def execute(steps: list[Step], replay: float = 0.1, dry_run: bool = False) -> None:
    for step in steps:
        done = step.kind != "pairs" and all(Path(o).exists() for o in step.outputs)  # pairs resume themselves
        print(f"[{step.kind}] {'(done) ' if done else ''}"
              + (shlex.join(step.command) if step.command else f"replay_mix{step.inputs} -> {step.outputs}"),
              flush=True)
        if done or dry_run:
            continue
        if step.kind == "mix":
            fresh, old = _read(step.inputs[0]), _read(step.inputs[1])
            _write(step.outputs[1], old + fresh)
            _write(step.outputs[0], replay_mix(fresh, old, replay, seed=step.seed))
        else:
            subprocess.run(step.command, check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m r1lab.rm.iterative", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=str(PIPELINE / "iterative"))
    p.add_argument("--policy", default=str(PIPELINE / "sft2" / "hf"), help="the first round's policy export")
    p.add_argument("--reward-model", default=str(PIPELINE / "rm" / "hf"), help="the first reward-model export")
    p.add_argument("--pairs", default=str(PIPELINE / "preferences" / "pairs.jsonl"), help="its training pairs")
    p.add_argument("--replay", type=float, default=0.1, help="share of older pairs replayed (DeepSeekMath: 10%%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grpo-args", default="", help="extra Hydra overrides of the GRPO runs, one string")
    p.add_argument("--pairs-args", default="", help='extra options of the pair sampler: --pairs-args="--k 4"')
    p.add_argument("--rm-args", default="", help="extra Hydra overrides of the reward-model runs, one string")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    steps = plan(args.rounds, args.out, args.policy, args.reward_model, args.pairs, args.seed,
                 grpo_args=tuple(shlex.split(args.grpo_args)), pairs_args=tuple(shlex.split(args.pairs_args)),
                 rm_args=tuple(shlex.split(args.rm_args)))
    execute(steps, args.replay, args.dry_run)


if __name__ == "__main__":
    main()
