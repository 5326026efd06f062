"""Run a pipeline stage by stage: ``python -m r1lab.pipeline [--pipeline tiny] [--stage S] [--force]``.

A pipeline (``conf/pipeline/<name>.yaml``) is a list of stages; each stage is a stage config
(``conf/stage/<stage>.yaml``: a training stage or a job) run by ``python -m r1lab.train`` with the
pipeline's Hydra overrides (``overrides``) and then the stage's own (``args``). Every stage writes
``outputs/pipeline/<name>/<stage>/`` and the next one reads its export by name. A stage whose folder
holds ``metrics.json`` (written last by ``r1lab.train``) is finished and skipped unless forced (a forced
stage's old folder is moved aside, never deleted); a stage that was interrupted (killed, or failed)
resumes in place, from its last checkpoint; a failing stage stops the pipeline with its name and
log, and earlier outputs stay as they were. At the end the results table and plots are written
(``r1lab.report``).

Pipeline files may build on each other and repeat stages:

- ``extends: <pipeline>`` takes that pipeline's stages; ``stage_args: {<stage>: [overrides]}`` adds
  overrides to single stages (the micro scale is the tiny pipeline with smaller stages);
- ``rounds: N`` with ``round: [stages]`` repeats a group of stages N times (iterative RL): in a round,
  ``{r}`` is its number and each name in ``carry`` (e.g. ``{policy}``) is what the previous round
  produced, ``start`` giving the first round's;
- ``reads: <pipeline>`` names the pipeline whose outputs ``{inputs}`` points at;
- ``compare: [methods]``: after the report, ``r1lab.compare`` sets the runs ``<method>_s<seed>`` side by
  side over seeds (a pipeline whose rounds are seeds: ``conf/pipeline/ppo_vs_grpo.yaml``);
  ``baseline: <stage>`` names the stage that tested the methods' common start, for the gains over it
  (``conf/pipeline/supervision.yaml``).

Placeholders in a stage's ``args``: ``{dir}`` (this pipeline's folder), ``{inputs}``, ``{out}`` (the
stage's own folder), ``{python}``; a ``run: [argv]`` stage runs a command instead (``done`` names the
file that marks it finished, ``done.json`` by default).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "pipeline"
DONE = "metrics.json"


class StageFailed(RuntimeError):
    pass


class PipelineError(ValueError):
    """A pipeline file that cannot be used; the message names the file and the entry."""


@dataclass
class Stage:
    name: str
    about: str = ""
    stage: str | None = None  # the stage config (conf/stage/<stage>.yaml); default: the name
    args: list[str] = field(default_factory=list)
    run: list[str] | None = None  # a command instead of a stage config
    done: str | None = None  # for a command: the file (relative to its folder) that marks it finished
    compare_to: list[str] = field(default_factory=list)  # earlier stages the report also measures its gain over

    def marker(self, folder: Path) -> Path:
        return folder / (self.done or ("done.json" if self.run is not None else DONE))


@dataclass
class Pipeline:
    name: str
    path: Path
    stages: list[Stage]
    overrides: list[str] = field(default_factory=list)
    reads: str | None = None
    compare: list[str] = field(default_factory=list)  # methods whose <method>_s<seed> runs r1lab.compare shows
    baseline: str | None = None  # the stage whose test metrics are the compared methods' start


def _pipeline_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF.glob("*.yaml"))
        raise PipelineError(f"--pipeline: no pipeline {name_or_path!r} (known: {known})")
    return path


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():  # only these placeholders: arguments may hold other braces
        text = text.replace("{" + key + "}", value)
    return text


def _stage(spec, path: Path, where: str, values: dict[str, str] | None = None) -> Stage:
    if not isinstance(spec, dict) or "name" not in spec or ("run" in spec and ("stage" in spec or "args" in spec)):
        raise PipelineError(f"{path}: {where} needs a name and either stage/args or run")
    unknown = set(spec) - {"name", "about", "stage", "args", "run", "done", "compare_to"}
    if unknown:
        raise PipelineError(f"{path}: {where}: unknown key(s) {sorted(unknown)}")
    values = values or {}
    spec = {k: (_fill(v, values) if isinstance(v, str) else [_fill(str(a), values) for a in v] if isinstance(v, list)
                else v) for k, v in spec.items()}
    return Stage(**spec)


def load_pipeline(name_or_path: str, rounds: int | None = None) -> Pipeline:
    """The stages of a pipeline file, with ``extends``, ``stage_args`` and ``rounds`` applied."""
    path = _pipeline_file(name_or_path)
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = set(spec) - {"name", "about", "overrides", "stages", "extends", "stage_args", "rounds", "round",
                           "start", "carry", "reads", "compare", "baseline"}
    if unknown:
        raise PipelineError(f"{path}: unknown key(s) {sorted(unknown)}")
    if "extends" in spec:
        base = load_pipeline(spec["extends"])
        stages = base.stages
        overrides = [*base.overrides, *spec.get("overrides", [])]
    else:
        stages = [_stage(s, path, f"stages[{i}]") for i, s in enumerate(spec.get("stages", []))]
        overrides = list(spec.get("overrides", []))
    names = [s.name for s in stages]
    for name, args in (spec.get("stage_args") or {}).items():
        if name not in names:
            raise PipelineError(f"{path}: stage_args.{name}: no stage of that name (stages: {', '.join(names)})")
        stage = stages[names.index(name)]
        stage.args = [*stage.args, *args]
    if "round" in spec:
        carried = dict(spec.get("start") or {})
        if set(carried) != set(spec.get("carry") or {}):
            raise PipelineError(f"{path}: start and carry must name the same values")
        for r in range(1, (rounds if rounds is not None else int(spec.get("rounds", 1))) + 1):
            values = {"r": str(r), **carried}
            stages += [_stage(s, path, f"round[{i}]", values) for i, s in enumerate(spec["round"])]
            carried = {k: _fill(v, values) for k, v in spec["carry"].items()}
    elif rounds is not None:
        raise PipelineError(f"--rounds: {path} has no round of stages to repeat")
    if not stages:
        raise PipelineError(f"{path}: no stages")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: stage names repeat ({', '.join(names)})")
    for i, stage in enumerate(stages):
        if not isinstance(stage.compare_to, list) or any(c not in names[:i] for c in stage.compare_to):
            raise PipelineError(f"{path}: stage {stage.name}: compare_to must list earlier stages "
                                f"(got {stage.compare_to!r}; before it: {', '.join(names[:i]) or 'none'})")
    if spec.get("baseline") is not None and spec["baseline"] not in names:
        raise PipelineError(f"{path}: baseline: no stage {spec['baseline']!r} (stages: {', '.join(names)})")
    return Pipeline(spec.get("name", path.stem), path, stages, overrides, spec.get("reads"),
                    list(spec.get("compare") or []), spec.get("baseline"))


def _command(stage: Stage, pipeline: Pipeline, root: Path, folder: Path, extra: list[str]) -> list[str]:
    values = {"dir": str(root), "python": sys.executable, "out": str(folder),
              "inputs": str(root.parent / (pipeline.reads or pipeline.name))}
    if stage.run is not None:
        return [_fill(a, values) for a in stage.run]
    # the pipeline's overrides, then the stage's own (the more specific wins), then the command line's
    args = [f"stage={stage.stage or stage.name}", *(_fill(a, values) for a in [*pipeline.overrides, *stage.args]),
            *extra]
    return [sys.executable, "-m", "r1lab.train", *args, f"pipeline_name={pipeline.name}",
            f"paths.output_root={root.parents[1]}", f"hydra.run.dir={folder}"]


def run_stage(stage: Stage, pipeline: Pipeline, root: Path, force: bool = False, extra: list[str] | None = None,
              fresh: bool = False) -> str:
    """Run one stage unless it is finished; returns "skipped", "done" or "resumed".

    A stage folder without its marker is an interrupted run: it resumes in place, from
    ``checkpoints/last.ckpt`` when it has one (jobs resume from their own files), unless ``fresh``
    asks to start it over. A finished stage is redone only when ``force``d; its old folder is moved
    aside, never deleted.
    """
    folder = root / stage.name
    marker = stage.marker(folder)
    extra = list(extra or [])
    if marker.exists() and not force:
        print(f"[pipeline] {stage.name}: finished ({marker}), skipped (--force to redo)", flush=True)
        return "skipped"
    resumed = False
    if folder.exists() and not marker.exists() and not fresh:
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file() and stage.run is None:
            extra.append(f"ckpt_path={last}")
        print(f"[pipeline] {stage.name}: interrupted earlier, resuming in {folder}"
              + (f" from {last}" if last.is_file() else ""), flush=True)
        resumed = True
    elif folder.exists():  # a finished run being redone, or an interrupted one started over
        kind = "old" if marker.exists() else "incomplete"
        aside = folder.with_name(f"{folder.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        print(f"[pipeline] {stage.name}: previous {kind} output moved to {aside}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = _command(stage, pipeline, root, folder, list(extra or []))
    print(f"[pipeline] {stage.name}: {stage.about}\n[pipeline]   $ {shlex.join(cmd)}", flush=True)
    start = time.time()
    with open(folder / "stage.log", "a" if resumed else "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if proc.returncode != 0 or not marker.exists():
        tail = (folder / "stage.log").read_text(errors="replace").strip().splitlines()[-15:]
        why = f"exit code {proc.returncode}" if proc.returncode else f"it did not write {marker}"
        raise StageFailed(
            f"stage {stage.name!r} failed ({why}); log: {folder / 'stage.log'}\n" + "\n".join(tail)
            + "\nEarlier stages' outputs are intact; fix the cause and rerun `python -m r1lab.pipeline`."
        )
    (folder / "stage.json").write_text(json.dumps({"stage": stage.name, "seconds": seconds, "command": cmd}, indent=2))
    print(f"[pipeline] {stage.name}: done in {seconds:.0f}s", flush=True)
    return "resumed" if resumed else "done"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="tiny", help="conf/pipeline/<name>.yaml or a YAML path")
    parser.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    parser.add_argument("--until", help="run the stages up to and including this one (finished ones are skipped)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of a repeated pipeline (iterative RL)")
    parser.add_argument("--force", action="store_true", help="redo stages that are finished")
    parser.add_argument("--fresh", action="store_true", help="start interrupted stages over instead of resuming them")
    parser.add_argument("--root", default="outputs", help="outputs root (pipeline folders go under <root>/pipeline)")
    parser.add_argument("--no-report", action="store_true", help="skip the results table and plots")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every stage")
    args = parser.parse_args(argv)
    try:
        pipeline = load_pipeline(args.pipeline, args.rounds)
    except PipelineError as error:
        parser.error(str(error))
    root = Path(args.root) / "pipeline" / pipeline.name
    names = [s.name for s in pipeline.stages]
    for wanted in args.stage or []:
        if wanted not in names:
            parser.error(f"--stage: no stage {wanted!r} in {pipeline.path} (stages: {', '.join(names)})")
    if args.until is not None and args.until not in names:
        parser.error(f"--until: no stage {args.until!r} in {pipeline.path} (stages: {', '.join(names)})")
    selected = [s for s in pipeline.stages if not args.stage or s.name in args.stage]
    if args.until is not None:
        selected = selected[:[s.name for s in selected].index(args.until) + 1]
    try:
        for stage in selected:
            run_stage(stage, pipeline, root, force=args.force or bool(args.stage), extra=args.overrides,
                      fresh=args.fresh)
    except StageFailed as e:
        print(f"[pipeline] {e}", file=sys.stderr, flush=True)
        return 1
    if not args.no_report and not args.stage and args.until is None:
        from r1lab.report import write_report

        table = write_report(root, names, {s.name: s.compare_to for s in pipeline.stages if s.compare_to})
        print(table)
        if pipeline.compare:
            from r1lab.compare import write_comparison

            print(write_comparison(root, pipeline.compare, pipeline.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
