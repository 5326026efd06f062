"""The pipeline runner: skip finished stages, force, stop on a failing stage with its name, keep outputs."""

import json
import textwrap
from pathlib import Path

import pytest

from r1lab.pipeline import PipelineError, load_pipeline, main

WRITE = "import json, sys; open(sys.argv[1] + '/done.json', 'w').write(json.dumps({'ok': 1}))"


def _spec(tmp_path, fail_b: bool) -> str:
    b = "import sys; print('boom: bad input in stage b'); sys.exit(3)" if fail_b else WRITE
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        name: micro
        stages:
          - name: a
            run: ["{{python}}", "-c", "{WRITE}", "{{out}}"]
          - name: b
            run: ["{{python}}", "-c", "{b}", "{{out}}"]
    """))
    return str(path)


def test_failing_stage_stops_with_its_name_and_keeps_earlier_outputs(tmp_path, capsys):
    spec = _spec(tmp_path, fail_b=True)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "stage 'b' failed (exit code 3)" in err and "boom: bad input in stage b" in err
    root = tmp_path / "pipeline" / "micro"
    assert json.loads((root / "a" / "done.json").read_text()) == {"ok": 1}
    assert json.loads((root / "a" / "stage.json").read_text())["seconds"] >= 0
    # fixed: the rerun skips a and completes b
    spec = _spec(tmp_path, fail_b=False)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "a: finished" in out and "b: done" in out


def test_rerunning_one_stage_moves_the_old_output_aside(tmp_path, capsys):
    spec = _spec(tmp_path, fail_b=False)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 0
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--stage", "a"]) == 0
    root = tmp_path / "pipeline" / "micro"
    assert len(list(root.glob("a.old-*"))) == 1 and (root / "a" / "done.json").is_file()
    with pytest.raises(SystemExit):
        main(["--pipeline", spec, "--root", str(tmp_path), "--stage", "nope"])
    assert "no stage 'nope'" in capsys.readouterr().err


def test_bad_pipeline_files_are_named(tmp_path):
    with pytest.raises(PipelineError, match="no pipeline 'missing'"):
        load_pipeline("missing")
    bad = tmp_path / "bad.yaml"
    for text, message in (("stages:\n  - about: x\n", r"stages\[0\] needs a name"),
                          ("stages:\n  - {name: x, run: [a], args: [b]}\n", r"stages\[0\] needs a name and either"),
                          ("stages:\n  - {name: x, train: [a]}\n", r"stages\[0\]: unknown key\(s\) \['train'\]"),
                          ("stages: []\n", "no stages"),
                          ("stages:\n  - {name: x}\n  - {name: x}\n", "stage names repeat"),
                          ("extends: tiny\nstage_args: {nope: [a=1]}\n", "stage_args.nope: no stage of that name")):
        bad.write_text(text)
        with pytest.raises(PipelineError, match=f"bad.yaml: {message}"):
            load_pipeline(str(bad))
    assert [s.name for s in load_pipeline("tiny").stages][:3] == ["base", "r1_zero", "sft"]


def test_micro_is_the_tiny_stage_list_with_smaller_stages():
    tiny, micro = load_pipeline("tiny"), load_pipeline("micro")
    assert [s.name for s in micro.stages] == [s.name for s in tiny.stages]
    assert micro.overrides[0] == "debug=fast"
    sft = {s.name: s for s in micro.stages}["sft"]
    assert sft.args == [*{s.name: s for s in tiny.stages}["sft"].args, "data.source.sizes.train=64"]


def test_stage_commands_fill_placeholders_and_let_the_stage_win(tmp_path):
    from r1lab.pipeline import _command

    pipeline = load_pipeline("micro")
    root = tmp_path / "pipeline" / "micro"
    sft = {s.name: s for s in pipeline.stages}["sft"]
    cmd = _command(sft, pipeline, root, root / "sft", ["seed=3"])
    args = cmd[3:]
    assert args[0] == "stage=sft" and f"backbone.name_or_path={root}/base/hf" in args
    assert args.index("debug=fast") < args.index("data.source.sizes.train=64") < args.index("seed=3")
    assert args[-3:] == ["pipeline_name=micro", f"paths.output_root={tmp_path}", f"hydra.run.dir={root / 'sft'}"]
    iterative = load_pipeline("iterative", rounds=1)
    first = _command(iterative.stages[0], iterative, tmp_path / "pipeline" / "iterative", tmp_path / "x", [])
    assert "stage=grpo_rm" in first and f"backbone.name_or_path={tmp_path}/pipeline/tiny/sft2/hf" in first
    with pytest.raises(PipelineError, match="--rounds"):
        load_pipeline("tiny", rounds=2)


@pytest.mark.slow
def test_micro_pipeline_runs_end_to_end_with_a_full_results_table(tmp_path, capsys):
    """Every stage of the R1 pipeline at micro scale (conf/pipeline/micro.yaml), then the report."""
    assert main(["--pipeline", "micro", "--root", str(tmp_path)]) == 0
    root = tmp_path / "pipeline" / "micro"
    for stage in ("base", "r1_zero", "sft", "grpo", "sft2", "rm", "grpo_rm", "distill", "student_sft"):
        assert (root / stage / "hf" / "config.json").is_file(), stage
    assert (root / "sft_data" / "v1" / "data.jsonl").is_file() and (root / "preferences" / "pairs.jsonl").is_file()
    table = (root / "results.md").read_text()
    first_table = table.split("| stage |")[1].split("\n\n")[0]
    policy_rows = [line for line in first_table.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in policy_rows] == [
        "base", "r1_zero", "sft", "grpo", "sft2", "grpo_rm", "distill", "student_sft"]
    for row in policy_rows:
        assert "–" not in row, row  # every cell filled
    assert (root / "rl_curves.png").stat().st_size > 10_000 and (root / "reward_model.png").is_file()
    import matplotlib.pyplot as plt

    # two panels: the reward model's pair accuracy and its raw score during grpo_rm (990 px, one is 495)
    assert plt.imread(root / "reward_model.png").shape[1] > 900
    # the reward model's score on held-out answers of the policy before and after GRPO with it
    scores = json.loads((root / "rm_score" / "scores.json").read_text())["rows"]
    assert [Path(r["policy"]).parent.name for r in scores] == ["sft2", "grpo_rm"]
    assert all(r["samples"] == 16 and r["score"] < 0 for r in scores)  # 8 prompts x 2; a log-prob is < 0
    assert "| sft2 | " in table and "| grpo_rm | " in table.split("raw score on")[1]
    assert "| stage | accuracy |" in capsys.readouterr().out
    # each stage's gain over the stage it started from, paired by prompt: over the same test prompts
    # the mean of the paired differences is the difference of the two accuracies
    gain_table = table.split("| gain ± s.e. |")[1].split("\n\n")[0]
    gains = {}
    for r in gain_table.splitlines():
        if r.startswith("| ") and "---" not in r:
            cells = [c.strip() for c in r.split("|")[1:5]]
            gains[(cells[0], cells[1])] = cells[3]
    # sft2 starts from base again; tiny.yaml's compare_to also measures it against sft and grpo
    assert list(gains) == [("r1_zero", "base"), ("sft", "base"), ("grpo", "sft"), ("sft2", "base"),
                           ("sft2", "sft (compared)"), ("sft2", "grpo (compared)"), ("grpo_rm", "sft2")]
    acc = {s: json.loads((root / s / "metrics.json").read_text())["test/accuracy"] for s in ("sft", "grpo", "sft2")}
    assert float(gains[("grpo", "sft")].split("±")[0]) == pytest.approx(acc["grpo"] - acc["sft"], abs=1e-3)
    assert float(gains[("sft2", "grpo (compared)")].split("±")[0]) == pytest.approx(acc["sft2"] - acc["grpo"],
                                                                                    abs=1e-3)
    rows = [json.loads(line) for line in (root / "grpo" / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["accuracy"] for r in rows) / 8 == pytest.approx(acc["grpo"], abs=1e-6)
    # a second run skips everything
    assert main(["--pipeline", "micro", "--root", str(tmp_path), "--no-report"]) == 0
    assert capsys.readouterr().out.count("skipped") == 13
    # same seed, same machine: a run from scratch elsewhere gives the same table (all but wall-clock time)
    again = tmp_path / "again"
    assert main(["--pipeline", "micro", "--root", str(again)]) == 0
    second = (again / "pipeline" / "micro" / "results.md").read_text()

    def without_time(text: str) -> list[str]:
        rows = [line.rsplit("|", 2)[0] for line in text.splitlines() if line.startswith("| ")]
        return [r for r in rows if "time (s)" not in r]

    assert len(without_time(table)) >= 9 and without_time(second) == without_time(table)
    assert table.split("Reward model")[1] == second.split("Reward model")[1]


def test_the_smol_pipeline_composes_and_evaluates_every_stage_on_one_world(tmp_path):
    from conftest import compose_cfg
    from r1lab.pipeline import _command

    smol = load_pipeline("smol")
    assert [s.name for s in smol.stages] == ["base", "sft", "grpo", "sft_data", "sft2"]
    worlds = {}
    for stage in smol.stages:
        argv = _command(stage, smol, tmp_path / "pipeline" / "smol", tmp_path / stage.name, [])
        overrides = [a for a in argv[3:] if not a.startswith("hydra.")]
        cfg = compose_cfg(tmp_path / stage.name, overrides)
        assert cfg.pipeline_name == "smol" and cfg.module.evaluation.max_new_tokens == 64, stage.name
        source = cfg.data.source.get("eval", cfg.data.source)
        worlds[stage.name] = {k: v for k, v in source.items() if k != "sizes"}, (source.sizes.val, source.sizes.test)
    assert len({repr(w) for w in worlds.values()}) == 1, worlds  # SFT-2's file is scored on the same test prompts
    assert worlds["base"][1] == (32, 200)


def test_paired_gain_against_hand_computed_values(tmp_path):
    from r1lab.report import gain_lines, paired_gain, started_from

    before = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0, "only_before": 1.0}
    after = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    gain, se, n = paired_gain(after, before)
    # differences 0, 1, 1, -1: mean 0.25, sample variance (0.0625 + 0.5625 * 2 + 1.5625) / 3 = 0.91667
    assert n == 4 and gain == pytest.approx(0.25) and se == pytest.approx((0.9166667 / 4) ** 0.5)
    for name, source, rows in (("sft", None, before), ("grpo", "${paths.pipeline_dir}/sft/hf", after)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"backbone:\n  name_or_path: {source}\n")
        (tmp_path / name / "test_predictions.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "accuracy": a}) + "\n" for p, a in rows.items()))
    assert started_from(tmp_path / "grpo", ["sft", "grpo"]) == "sft" and started_from(tmp_path / "sft", ["sft"]) is None
    lines = gain_lines(tmp_path, ["sft", "grpo"])
    se_acc, se_gain = (0.75 * 0.25 / 4) ** 0.5, (0.9166667 / 4) ** 0.5
    assert f"| grpo | sft | 0.750 ± {se_acc:.3f} | +0.250 ± {se_gain:.3f} | 4 |" in lines
    assert not any(line.startswith("| sft |") for line in lines)  # it started from no stage
    # a stage's pipeline entry can name more stages to measure it against: the reverse gain, flagged
    lines = gain_lines(tmp_path, ["sft", "grpo"], {"sft": ["grpo"]})
    se_back = (0.6 * 0.4 / 5) ** 0.5
    assert f"| sft | grpo (compared) | 0.600 ± {se_back:.3f} | -0.250 ± {se_gain:.3f} | 4 |" in lines


def test_compare_to_must_name_earlier_stages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages:\n  - {name: a}\n  - {name: b, compare_to: [c]}\n")
    with pytest.raises(PipelineError, match=r"bad.yaml: stage b: compare_to must list earlier stages.*before it: a"):
        load_pipeline(str(bad))
    assert load_pipeline("smol").stages[4].compare_to == ["sft", "grpo"]
