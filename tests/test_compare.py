"""Methods side by side over seeds (r1lab.compare), and the ppo_vs_grpo pipeline that feeds it."""

import json
import math
import statistics

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from r1lab.compare import chain_curve, comparison_table, curves, sampled, write_comparison
from r1lab.compare import main as compare_main
from r1lab.pipeline import PipelineError, _command, load_pipeline, main


def _run(root, name, accuracy, step_s, val, peak=1.0, params=2e6, prompts=4, group=2, extra=None, trained=None,
         metrics=None, chains=()):
    """A finished run's folder. ``extra``: train/extra_rollouts per step, with ``trained`` the prompts
    dynamic sampling trains per step (``prompts`` is then its pool); ``chains``: val/chain_correct."""
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    module = {"group_size": group, "num_iterations": 1, "mini_batches": 1}
    if trained is not None:
        module |= {"dynamic_sampling": True, "dynamic_sampling_prompts": trained}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"batch_size": prompts}, "module": module}))
    (folder / "metrics.json").write_text(json.dumps({"test/accuracy": accuracy, "train/reward": accuracy + 1,
                                                     "train/params_in_memory": params, **(metrics or {})}))
    (folder / "stage.json").write_text(json.dumps({"seconds": 10 * len(step_s)}))
    writer = SummaryWriter(str(folder / "tb"))
    for step, s in enumerate(step_s, start=1):
        writer.add_scalar("train/step_s", s, step)
        writer.add_scalar("train/peak_memory_gb", peak * step / len(step_s), step)
        if extra is not None:
            writer.add_scalar("train/extra_rollouts", extra[step - 1], step)
    for step, acc in val:
        writer.add_scalar("val/accuracy", acc, step)
    for step, share in chains:
        writer.add_scalar("val/chain_correct", share, step)
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


def test_dynamic_sampling_counts_the_extra_rollouts_it_sampled_in_the_curves_and_the_table(tmp_path):
    # trains 4 prompts x G 2 = 8 per step from a pool of 6 prompts; sampled 8 + 0, 8 + 4, 8 + 2
    run = _run(tmp_path, "dynamic_s1", 0.5, [2.0, 3.0, 2.5], [(2, 0.4), (3, 0.5)], prompts=6, trained=4,
               extra=[0.0, 4.0, 2.0], chains=[(3, 0.25)])
    assert sampled(run) == [(1, 8.0), (2, 20.0), (3, 30.0)]
    by_samples, by_time = curves(run)
    assert by_samples == [(20.0, pytest.approx(0.4)), (30.0, pytest.approx(0.5))]
    assert by_time == [(5.0, pytest.approx(0.4)), (7.5, pytest.approx(0.5))]
    assert chain_curve(run) == [(30.0, pytest.approx(0.25))]
    _run(tmp_path, "outcome_s1", 0.5, [1.0] * 3, [(3, 0.5)], prompts=4)  # no extras logged: 8 per step
    table, rows = comparison_table(tmp_path, ["outcome", "dynamic"])
    assert [rows[m][0]["sampled"] for m in ("outcome", "dynamic")] == [24.0, 30.0]
    assert "| sampled completions |" in table.splitlines()[0] and "| 30 |" in table and "| 24 |" in table
    write_comparison(tmp_path, ["outcome", "dynamic"])  # a third panel: the chains of thought
    assert (tmp_path / "comparison.png").is_file()


def test_the_runs_own_running_totals_count_the_steps_that_were_not_logged(tmp_path):
    # logged every 10th step: the running totals, not the logged steps, say what was sampled and spent
    run = _run(tmp_path, "outcome_s1", 0.5, [2.0, 2.0], [(10, 0.4), (20, 0.5)], prompts=4)
    writer = SummaryWriter(str(run / "tb"))
    for step in (10, 20):
        writer.add_scalar("train/completions_sampled", 8.0 * step, step)
        writer.add_scalar("train/train_seconds", 2.0 * step, step)
    writer.close()
    assert sampled(run) == [(10, 80.0), (20, 160.0)]
    by_samples, by_time = curves(run)
    assert by_samples == [(80.0, pytest.approx(0.4)), (160.0, pytest.approx(0.5))]
    assert by_time == [(20.0, pytest.approx(0.4)), (40.0, pytest.approx(0.5))]
    _, rows = comparison_table(tmp_path, ["outcome"])
    assert rows["outcome"][0]["sampled"] == 160.0 and rows["outcome"][0]["train_s"] == 40.0


def test_the_baseline_row_and_the_gains_per_sampled_completion_and_per_minute(tmp_path):
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "metrics.json").write_text(json.dumps(
        {"test/accuracy": 0.4, "test/chain_correct": 0.3, "test/pass@1": 0.35}))
    # 4 prompts x G 2 = 8 per step, 5 steps: 40 sampled, 10 s of training (the stage took 50 s)
    _run(tmp_path, "process_s1", 0.6, [2.0] * 5, [(5, 0.6)], metrics={"test/chain_correct": 0.5})
    _run(tmp_path, "process_s2", 0.5, [2.0] * 5, [(5, 0.5)], metrics={"test/chain_correct": 0.4})
    table, rows = comparison_table(tmp_path, ["process"], baseline="start")
    header, _, start, process = table.splitlines()
    assert "| fully correct CoT (test) |" in header and "| Δ accuracy / 1k completions |" in header
    gains_1k = [(0.6 - 0.4) / 40 * 1000, (0.5 - 0.4) / 40 * 1000]  # 5.0 and 2.5
    gains_min = [(0.6 - 0.4) / 10 * 60, (0.5 - 0.4) / 10 * 60]  # 1.2 and 0.6
    assert [r["gain_per_1k"] for r in rows["process"]] == pytest.approx(gains_1k)
    assert [r["gain_per_min"] for r in rows["process"]] == pytest.approx(gains_min)
    assert start.startswith("| start (start) | – | 0.400 | 0.300 | 0.350 | – |")
    assert process.startswith("| process | 2 | 0.550 ± 0.050 | 0.450 ± 0.050 |")
    assert "| 3.7500 ± 1.2500 | 0.900 ± 0.300 |" in process
    # no baseline, no chains: those columns are left out
    plain, _ = comparison_table(tmp_path, ["process"])
    assert "Δ accuracy" not in plain and "(start)" not in plain
    (tmp_path / "other").mkdir()
    _run(tmp_path / "other", "grpo_s1", 0.6, [1.0], [(1, 0.6)])
    assert "fully correct CoT" not in comparison_table(tmp_path / "other", ["grpo"])[0]
    assert compare_main([str(tmp_path), "process", "--baseline", "start"]) == 0
    assert "Δ accuracy: test accuracy minus that of `start`" in (tmp_path / "comparison.md").read_text()
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path), "process", "--baseline", "nowhere"])


def test_the_supervision_pipeline_compares_five_methods_per_seed_on_one_sample_budget(tmp_path):
    pipeline = load_pipeline("supervision")
    methods = ["outcome", "process", "process_answer", "both", "dynamic"]
    assert [s.name for s in pipeline.stages] == ["cold_start", *(f"{m}_s{r}" for r in (1, 2, 3) for m in methods)]
    assert pipeline.compare == methods and pipeline.baseline == "cold_start"
    root = tmp_path / "pipeline" / "supervision"
    cmds = {s.name: _command(s, pipeline, root, root / s.name, []) for s in pipeline.stages[:6]}
    start = f"backbone.name_or_path={tmp_path}/pipeline/tiny/sft/hf"
    assert all(start in c and "stage=grpo" in c and "~data.source.families.code" in c for c in cmds.values())
    assert "train=false" in cmds["cold_start"] and all("seed=1" in c for n, c in cmds.items() if n != "cold_start")
    assert "module.supervision=process" in cmds["process_s1"] and "module.supervision=both" in cmds["both_s1"]
    answer = "module.answer_step=true"
    assert answer in cmds["process_answer_s1"] and answer not in cmds["process_s1"]

    def last(cmd, key, default):  # the value a key ends up with (the later override wins)
        values = [a.split("=", 1)[1] for a in cmd if a.startswith(key + "=")]
        return values[-1] if values else default

    def budget(cmd):  # (prompts x G trained per step, at most sampled in the run)
        dynamic = last(cmd, "module.dynamic_sampling", "false") == "true"
        trained = int(last(cmd, "module.dynamic_sampling_prompts" if dynamic else "data.batch_size", 16)) * 8
        extra = int(last(cmd, "module.dynamic_sampling_max_rollouts", 0)) if dynamic else 0
        return trained, int(last(cmd, "trainer.max_steps", 0)) * (trained + extra)

    assert [budget(cmds[f"{m}_s1"]) for m in methods] == [(128, 7680)] * 5
    pool = int(last(cmds["dynamic_s1"], "data.batch_size", 16))
    assert (pool - 16) * 8 == int(last(cmds["dynamic_s1"], "module.dynamic_sampling_max_rollouts", 0))


def test_a_baseline_must_be_a_stage_of_the_pipeline(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("name: b\nbaseline: start\nstages:\n  - {name: a}\n")
    with pytest.raises(PipelineError, match="baseline: no stage 'start'"):
        load_pipeline(str(spec))


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
