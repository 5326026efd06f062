"""Run the R1 pipeline stage by stage: ``python -m r1lab.pipeline [--pipeline tiny] [--stage S] [--force]``.

Every stage writes ``outputs/pipeline/<name>/<stage>/`` and the next one reads its export by name.
A stage whose output exists is skipped unless forced (a forced stage's old folder is moved aside,
never deleted); a failing stage stops the pipeline with its name and log, and earlier outputs stay
as they were. At the end the results table and plots are written (``r1lab.report``).
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


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    about: str = ""
    train: list[str] | None = None
    run: list[str] | None = None
    done: str | None = None  # a file (relative to the stage folder) whose existence means "done"
    extra: list[str] = field(default_factory=list)

    def marker(self, folder: Path) -> Path:
        return folder / (self.done or ("hf/config.json" if self.train is not None else "done.json"))


def load_pipeline(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF.glob("*.yaml"))
        raise FileNotFoundError(f"--pipeline: no pipeline {name_or_path!r} (known: {known})")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    stages = []
    for i, s in enumerate(spec.get("stages", [])):
        if not isinstance(s, dict) or "name" not in s or (("train" in s) == ("run" in s)):
            raise ValueError(f"{path}: stages[{i}] needs a name and exactly one of train/run")
        stages.append(Stage(**s))
    return {"name": spec.get("name", path.stem), "overrides": list(spec.get("overrides", [])), "stages": stages,
            "path": path}


def _command(stage: Stage, pipeline: dict, root: Path, folder: Path, extra: list[str]) -> list[str]:
    fill = {"{dir}": str(root), "{python}": sys.executable, "{out}": str(folder)}

    def expand(arg: str) -> str:  # only these placeholders: arguments may hold other braces
        for key, value in fill.items():
            arg = arg.replace(key, value)
        return arg

    if stage.train is not None:
        args = [expand(a) for a in stage.train] + pipeline["overrides"] + extra
        return [sys.executable, "-m", "r1lab.train", *args, f"pipeline_name={pipeline['name']}",
                f"paths.output_root={root.parents[1]}", f"hydra.run.dir={folder}"]
    return [expand(a) for a in stage.run]


def run_stage(stage: Stage, pipeline: dict, root: Path, force: bool = False, extra: list[str] | None = None) -> str:
    """Run one stage unless its output exists; returns "skipped" or "done"."""
    folder = root / stage.name
    marker = stage.marker(folder)
    if marker.exists() and not force:
        print(f"[pipeline] {stage.name}: output exists ({marker}), skipped (--force to redo)", flush=True)
        return "skipped"
    if folder.exists():  # a finished run being redone, or the remains of an interrupted one
        kind = "old" if marker.exists() else "incomplete"
        aside = folder.with_name(f"{folder.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        print(f"[pipeline] {stage.name}: previous {kind} output moved to {aside}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = _command(stage, pipeline, root, folder, list(extra or []))
    print(f"[pipeline] {stage.name}: {stage.about}\n[pipeline]   $ {shlex.join(cmd)}", flush=True)
    start = time.time()
    with open(folder / "stage.log", "w") as log:
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
    return "done"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="tiny", help="conf/pipeline/<name>.yaml or a YAML path")
    parser.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo stages whose output exists")
    parser.add_argument("--root", default="outputs", help="outputs root (pipeline folders go under <root>/pipeline)")
    parser.add_argument("--no-report", action="store_true", help="skip the results table and plots")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every train stage")
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.pipeline)
    root = Path(args.root) / "pipeline" / pipeline["name"]
    names = [s.name for s in pipeline["stages"]]
    for wanted in args.stage or []:
        if wanted not in names:
            parser.error(f"--stage: no stage {wanted!r} in {pipeline['path']} (stages: {', '.join(names)})")
    selected = [s for s in pipeline["stages"] if not args.stage or s.name in args.stage]
    try:
        for stage in selected:
            run_stage(stage, pipeline, root, force=args.force or bool(args.stage), extra=args.overrides)
    except StageFailed as e:
        print(f"[pipeline] {e}", file=sys.stderr, flush=True)
        return 1
    if not args.no_report and not args.stage:
        from r1lab.report import write_report

        table = write_report(root, [s.name for s in pipeline["stages"]])
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
