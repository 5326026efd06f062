"""The entry point with the real configs at tiny scale: composition, outputs, resume, errors, sweeps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from r1lab.models.tokenizer import load_tokenizer
from r1lab.train import ConfigError, build, run

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (ROOT / "conf" / "stage").glob("*.yaml") if not p.stem.startswith("_"))
FAST = ["debug=fast", "callbacks.progress_bar=null"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_config_composes_and_instantiates(make_cfg, pipeline_root, tmp_path, stage):
    extra = [f"job.fresh={tmp_path}/a.jsonl", f"job.old={tmp_path}/b.jsonl"] if stage == "replay_mix" else []
    # the PRM's rows come from a task source inside its data source (conf/data/step_labels.yaml)
    data = (["data.source.tasks.sizes={train:64,val:16,test:16}", "data.batch_size=8"]
            if stage in ("prm", "prm_labels") else None)
    cfg = make_cfg(f"stage={stage}", *FAST, f"paths.output_root={pipeline_root}", *extra, data=data)
    if cfg.get("job") is not None:  # a data-generating stage: its job builds (and checks its settings)
        job = build(cfg, "job")
        assert callable(job.run) and cfg.stage_name == stage
        return
    backbone = build(cfg, "backbone")
    datamodule = build(cfg, "data")
    datamodule.connect(backbone.tokenizer)
    datamodule.setup("fit")
    module = build(cfg, "module", backbone=backbone)
    trainer = build(cfg, "trainer", callbacks=[build(cfg, f"callbacks.{k}") for k in cfg.callbacks if cfg.callbacks[k]])
    assert datamodule.mode == cfg.data.mode and trainer.max_steps == cfg.trainer.max_steps
    assert module.tokenizer is backbone.tokenizer


def _event_files(path: Path) -> list[Path]:
    return list(path.rglob("events.out.tfevents.*"))


def test_fast_run_writes_tensorboard_checkpoint_export_and_metrics(make_cfg, tmp_path):
    cfg = make_cfg("stage=sft", *FAST)
    metrics = run(cfg)
    assert _event_files(tmp_path / "tb"), "no TensorBoard event file"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    for key in ("train/loss", "val/accuracy", "val/format", "test/accuracy", "test/pass@1", "test/maj@k"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    # the Hugging Face export loads with plain transformers and holds the trained weights
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    trained = ckpt["state_dict"]["policy.model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, trained)
    tok = load_tokenizer(str(tmp_path / "hf"))
    assert tok.decode(tok("What is 3 + 4?").input_ids) == "What is 3 + 4?"


def test_export_of_the_best_checkpoint_instead_of_the_final_weights(make_cfg, tmp_path):
    # validation at steps 2, 4, 6; the untrained model's accuracy stays 0, so the first one stays best
    metrics = run(make_cfg("stage=sft", *FAST, "trainer.max_steps=6", "callbacks.hf_export.weights=best"))
    best = sorted((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert [p.name for p in best] == ["best-step000002.ckpt"]
    key = "policy.model.layers.0.mlp.up_proj.weight"
    kept = torch.load(best[0], weights_only=True)["state_dict"][key]
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"][key]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").model.layers[0].mlp.up_proj.weight
    assert torch.equal(exported, kept) and not torch.equal(exported, final)
    assert "test/accuracy" in metrics  # the test ran on those restored weights
    with pytest.raises(ValueError, match="callbacks.hf_export.weights"):
        run(make_cfg("stage=sft", *FAST, "callbacks.hf_export.weights=newest"))


def test_resume_continues_where_the_run_stopped(make_cfg, tmp_path):
    first = make_cfg("stage=sft", *FAST, "test=false", "trainer.max_steps=4")
    run(first)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = make_cfg("stage=sft", *FAST, "test=false", "trainer.max_steps=8", f"ckpt_path={last}")
    run(resumed)
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 8
    # AdamW counted 8 updates: the optimizer state came back with the weights (a fresh start would say 4)
    steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {8.0}
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 8


def test_bad_config_values_name_the_key(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="^module.loss_on: 'everything' is not"):
        run(make_cfg("stage=sft", *FAST, "module.loss_on=everything"))
    with pytest.raises(ConfigError, match="ckpt_path: no checkpoint file"):
        run(make_cfg("stage=sft", *FAST, f"ckpt_path={tmp_path}/nope.ckpt"))
    with pytest.raises(ConfigError, match="^data.mode: unknown mode"):
        run(make_cfg("stage=sft", *FAST, "data.mode=ppo"))
    with pytest.raises(hydra.errors.ConfigCompositionException):
        make_cfg("stage=no_such_stage")
    assert not (tmp_path / "checkpoints").exists()


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "r1lab.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_multirun_sweep_writes_runs_named_by_their_overrides(tmp_path):
    proc = _cli(["-m", "stage=sft", *FAST, "test=false", "trainer.max_steps=2", "data.source.sizes.train=64",
                 f"paths.output_root={tmp_path}", "module.optimizer.lr=1e-3,3e-3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "sft" / "multiruns").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    common = "callbacks.progress_bar=null,data.source.sizes.train=64,debug=fast"
    assert runs == [f"{common},module.optimizer.lr={lr},stage=sft,test=False,trainer.max_steps=2"
                    for lr in ("0.001", "0.003")]
    for name in runs:
        assert _event_files(sweep / name / "tb")
        assert (sweep / name / ".hydra" / "overrides.yaml").is_file()
    # any checkpoint of a run can be exported in Hugging Face format afterwards
    from r1lab.export import export_checkpoint

    run_dir = sweep / runs[0]
    out = export_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert out == run_dir / "hf-last"
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    final = AutoModelForCausalLM.from_pretrained(run_dir / "hf").state_dict()
    assert all(torch.equal(exported[k], final[k]) for k in final)


@pytest.mark.ddp
def test_ddp_with_two_cpu_processes(tmp_path):
    proc = _cli(["stage=sft", *FAST, "trainer=ddp_sim", "data.source.sizes.train=64",
                 f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/accuracy" in metrics and "train/loss" in metrics
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert (tmp_path / "run" / "hf" / "model.safetensors").is_file()


def test_hf_backbone_on_an_external_jsonl_data_set(make_cfg, pipeline_root, tmp_path):
    """The real-model path: a Hugging Face folder as backbone, a GSM8K-layout JSONL as data."""
    from r1lab.data.tinyworld.export import export_jsonl

    files = export_jsonl(tmp_path / "data", {"train": 48, "test": 8}, layout="gsm8k")
    cfg = make_cfg(
        "stage=sft", *FAST, "backbone=hf", f"backbone.name_or_path={pipeline_root}/pipeline/tiny/sft/hf",
        "backbone.dtype=float32", "data=gsm8k", f"data.source.train={files['train']}",
        f"data.source.test={files['test']}", "data.source.val_size=8", "data.source.fields.response=solution",
        "data.num_workers=0", data=[],
    )
    metrics = run(cfg)
    assert metrics["train/loss"] > 0 and 0.0 <= metrics["test/accuracy"] <= 1.0
    assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_optuna_search_over_grpo_knobs_optimises_the_held_out_accuracy(tmp_path):
    proc = _cli(["-m", "stage=grpo", "hparams_search=grpo_optuna", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler.n_startup_trials=2", *FAST, "backbone=tiny", "backbone.name_or_path=null",
                 "data.source.sizes={train:64,val:8,test:8}", "module.max_new_tokens=8", "trainer.max_steps=2",
                 f"paths.output_root={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "grpo" / "multiruns").iterdir()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and 0.0 <= results["best_value"] <= 1.0
    assert set(results["best_params"]) == {"module.optimizer.lr", "module.beta", "module.kl_estimator",
                                           "module.clip_high", "module.group_size"}
    runs = [p for p in sweep.iterdir() if (p / "metrics.json").is_file()]
    assert len(runs) == 2 and all("val/accuracy" in json.loads((p / "metrics.json").read_text()) for p in runs)
    # the sweep summary tabulates both trials
    from r1lab.bench.sweep_summary import summarise

    summary = summarise(sweep)
    assert summary.startswith("All runs: ") and "trainer.max_steps=" in summary.splitlines()[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and all("trainer.max_steps" not in r for r in rows)  # header + two trials


def test_the_real_model_recipe_pins_the_published_r1_settings(make_cfg):
    cfg = make_cfg("stage=grpo", "experiment=qwen2.5_0.5b_gsm8k", "data.source.train=train.jsonl", data=[])
    assert cfg.backbone.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.backbone.dtype == "bfloat16"
    m = cfg.module
    assert (m.group_size, m.beta, m.temperature, m.optimizer.lr, m.ref_reset_every, m.mini_batches) == (
        16, 0.001, 1.0, 3e-6, 400, 16)
    assert cfg.trainer.strategy == "ddp" and cfg.data.mode == "rl"
    assert cfg.module.rewards.functions.accuracy == "accuracy_math"
