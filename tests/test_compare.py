"""Methods side by side over seeds (r1lab.compare), and the ppo_vs_grpo pipeline that feeds it."""

import json
import math
import statistics

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from r1lab.compare import comparison_table, curves, write_comparison
from r1lab.pipeline import _command, load_pipeline, main


def _run(root, name, accuracy, step_s, val, peak=1.0, params=2e6, prompts=4, group=2):
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"batch_size": prompts}, "module": {"group_size": group, "num_iterations": 1, "mini_batches": 1}}))
    (folder / "metrics.json").write_text(json.dumps({"test/accuracy": accuracy, "train/reward": accuracy + 1,
                                                     "train/params_in_memory": params}))
    (folder / "stage.json").write_text(json.dumps({"seconds": 10 * len(step_s)}))
    writer = SummaryWriter(str(folder / "tb"))
    for step, s in enumerate(step_s, start=1):
        writer.add_scalar("train/step_s", s, step)
        writer.add_scalar("train/peak_memory_gb", peak * step / len(step_s), step)
    for step, acc in val:
        writer.add_scalar("val/accuracy", acc, step)
    writer.close()
    return folder


def test_the_table_gives_each_method_its_mean_and_standard_error_over_seeds(tmp_path):
    _run(tmp_path, "ppo_s1", 0.5, [2.0, 2.0], [(2, 0.4)], peak=3.0, params=4e6)
    _run(tmp_path, "ppo_s2", 0.7, [4.0, 4.0], [(2, 0.6)], peak=3.5, params=4e6)
    _run(tmp_path, "grpo_s1", 0.6, [1.0, 1.0], [(2, 0.5)])
    _run(tmp_path, "grpo_s2", 0.6, [1.0, 1.0], [(2, 0.5)])
    (tmp_path / "grpo_s3").mkdir()  # unfinished: no metrics.json, left out
    table, rows = comparison_table(tmp_path, ["ppo", "grpo", "rloo"])
    se = statistics.stdev([0.5, 0.7]) / math.sqrt(2)
    ppo = next(line for line in table.splitlines() if line.startswith("| ppo "))
    assert f"| 2 | 0.600 ± {se:.3f} |" in ppo and "| 3.00 ± 1.00 |" in ppo and "| 3.25 ± 0.25 |" in ppo
    assert "| 4.00M |" in ppo
    assert len(rows["grpo"]) == 2 and rows["rloo"] == [] and "| rloo" not in table
    assert "| grpo | 2 | 0.600 ± 0.000 |" in table


def test_curves_count_sampled_completions_and_cumulative_training_time(tmp_path):
    run = _run(tmp_path, "grpo_s1", 0.5, [1.5, 2.5, 3.0, 1.0], [(2, 0.3), (4, 0.45)], prompts=4, group=8)
    by_samples, by_time = curves(run)
    assert by_samples == [(2 * 32, pytest.approx(0.3)), (4 * 32, pytest.approx(0.45))]
    assert by_time == [(4.0, pytest.approx(0.3)), (8.0, pytest.approx(0.45))]
    write_comparison(tmp_path, ["grpo"])
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "| grpo | 1 | 0.500 |" in (tmp_path / "comparison.md").read_text()


def test_the_ppo_vs_grpo_pipeline_runs_three_methods_per_seed_from_the_tiny_cold_start(tmp_path):
    pipeline = load_pipeline("ppo_vs_grpo")
    assert [s.name for s in pipeline.stages] == [f"{m}_s{r}" for r in (1, 2, 3) for m in ("ppo", "grpo", "rloo")]
    assert pipeline.compare == ["ppo", "grpo", "rloo"]
    root = tmp_path / "pipeline" / "ppo_vs_grpo"
    cmds = {s.name: _command(s, pipeline, root, root / s.name, []) for s in pipeline.stages[:3]}
    start = f"backbone.name_or_path={tmp_path}/pipeline/tiny/sft/hf"
    assert all(start in c and "seed=1" in c for c in cmds.values())
    assert "stage=ppo" in cmds["ppo_s1"] and "module.estimator=rloo" in cmds["rloo_s1"]
    # the same sampled completions per step for every method: one data and group setting for all
    assert not any(a.startswith(("data.batch_size", "module.group_size")) for c in cmds.values() for a in c)


def test_until_runs_the_stages_up_to_one_and_skips_finished_ones(tmp_path, capsys):
    write = "import json, sys; open(sys.argv[1] + '/done.json', 'w').write(json.dumps({'ok': 1}))"
    spec = tmp_path / "p.yaml"
    spec.write_text("name: u\nstages:\n" + "".join(
        f"  - {{name: {n}, run: ['{{python}}', '-c', \"{write}\", '{{out}}']}}\n" for n in "abc"))
    assert main(["--pipeline", str(spec), "--root", str(tmp_path), "--until", "b"]) == 0
    root = tmp_path / "pipeline" / "u"
    assert (root / "a" / "done.json").is_file() and (root / "b" / "done.json").is_file() and not (root / "c").exists()
    assert main(["--pipeline", str(spec), "--root", str(tmp_path), "--until", "b"]) == 0
    assert capsys.readouterr().out.count("finished") == 2
    with pytest.raises(SystemExit):
        main(["--pipeline", str(spec), "--root", str(tmp_path), "--until", "z"])
