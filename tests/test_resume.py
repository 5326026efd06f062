"""A run killed with SIGKILL resumes from its last checkpoint and logs what an uninterrupted run logs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# machine figures: they differ between runs
TIMING = ("step_s", "tokens_per_s", "sample_share", "score_share", "peak_memory_gb", "train_seconds")


def _train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "r1lab.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _kill_and_resume(args: list[str], tmp_path: Path, kill_at: int) -> tuple[Path, Path]:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _train([*args, f"hydra.run.dir={whole}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = _train([*args, f"hydra.run.dir={killed}", "+callbacks.kill._target_=conftest.KillAt",
                   f"+callbacks.kill.step={kill_at}"], tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "metrics.json").exists() and not (killed / "hf").exists()
    last = killed / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]  # tensors and plain data only
    assert 0 < step < kill_at
    again = _train([*args, f"hydra.run.dir={killed}", f"ckpt_path={last}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    return whole, killed


def _same_metrics(whole: Path, killed: Path) -> int:
    a, b = scalars(whole), scalars(killed)
    tags = sorted(t for t in a if t.startswith(("train/", "val/")) and not t.endswith(TIMING))
    assert tags and set(tags) <= set(b)
    for tag in tags:  # the same steps (none logged twice after the resume) with the same values
        assert [s for s, _ in b[tag]] == [s for s, _ in a[tag]], tag
        for (step, x), (_, y) in zip(a[tag], b[tag]):
            assert y == pytest.approx(x, rel=1e-5, abs=1e-6), (tag, step)
    assert (whole / "hf" / "model.safetensors").read_bytes() == (killed / "hf" / "model.safetensors").read_bytes()
    return len(tags)


@pytest.mark.slow
def test_a_killed_grpo_run_resumes_with_the_same_metrics(pipeline_root, tmp_path):
    """GRPO from the cold-start export, a checkpoint every 2 steps, SIGKILL after step 5 (after the step-4
    checkpoint, before step 6's): the resumed run logs every later step as the uninterrupted run does
    (rewards, losses, KL, evaluation), mid-epoch (8 steps of an epoch of 16 batches), and ends on the same
    weights."""
    args = ["stage=grpo", "debug=fast", "callbacks.progress_bar=null", f"paths.output_root={pipeline_root}",
            "data.source.sizes={train:64,val:8,test:8}", "data.batch_size=4", "module.group_size=2",
            "module.max_new_tokens=8", "trainer.max_steps=8", "trainer.val_check_interval=4",
            "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=2", "test=false"]
    whole, killed = _kill_and_resume(args, tmp_path, kill_at=5)
    assert _same_metrics(whole, killed) >= 10
    assert {"train/reward", "train/loss", "train/kl", "val/accuracy"} <= set(scalars(whole))


@pytest.mark.slow
def test_a_killed_bf16_grpo_run_resumes_with_the_same_metrics(pipeline_root, tmp_path):
    """The same under bf16 autocast (the smol pipeline's GRPO setting): the resumed run's rollouts, losses
    and final weights are those of the uninterrupted one."""
    args = ["stage=grpo", "debug=fast", "callbacks.progress_bar=null", f"paths.output_root={pipeline_root}",
            "data.source.sizes={train:32,val:4,test:4}", "data.batch_size=4", "module.group_size=2",
            "module.max_new_tokens=8", "trainer.max_steps=6", "trainer.val_check_interval=3",
            "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=2", "test=false",
            "trainer.precision=bf16-mixed"]
    whole, killed = _kill_and_resume(args, tmp_path, kill_at=3)
    assert _same_metrics(whole, killed) >= 10


@pytest.mark.slow
def test_a_killed_grpo_run_with_dynamic_sampling_and_step_rewards_resumes_with_the_same_metrics(pipeline_root,
                                                                                                 tmp_path):
    """Dynamic sampling draws its extra prompts from the step's own loader batch and process supervision
    reads the rule verifier: a resumed run sees the same pools and logs the same fill rates, step rewards
    and losses as the uninterrupted run, and ends on the same weights."""
    args = ["stage=grpo", "debug=fast", "callbacks.progress_bar=null", f"paths.output_root={pipeline_root}",
            "data.source.sizes={train:64,val:8,test:8}", "~data.source.families.code", "data.batch_size=6",
            "module.group_size=2", "module.max_new_tokens=8", "module.dynamic_sampling=true",
            "module.dynamic_sampling_prompts=4", "module.supervision=both", "trainer.max_steps=6",
            "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
            "callbacks.last_checkpoint.every_n_train_steps=2", "test=false"]
    whole, killed = _kill_and_resume(args, tmp_path, kill_at=3)
    assert _same_metrics(whole, killed) >= 10
    assert {"train/dynamic_fill_rate", "train/extra_rollouts", "train/step_reward"} <= set(scalars(whole))


@pytest.mark.slow
def test_a_killed_sft_run_resumes_mid_epoch_with_the_same_metrics(tmp_path):
    args = ["stage=sft", "debug=fast", "callbacks.progress_bar=null", "data.source.sizes={train:64,val:8,test:8}",
            "data.batch_size=4", "data.train_limit=null", "trainer.max_steps=12", "trainer.val_check_interval=6",
            "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_train_steps=4", "test=false"]
    whole, killed = _kill_and_resume(args, tmp_path, kill_at=7)  # an epoch is 16 batches: the kill is mid-epoch
    assert _same_metrics(whole, killed) >= 2
