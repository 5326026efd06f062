"""GRPO with rollout.engine=vllm: a short CPU run on an easy reward raises the mean reward, the engine
follows every update, and the train/inference mismatch it logs is at fp32 rounding level."""

from __future__ import annotations

import lightning as L
import torch

from conftest import OPTIONS
from r1lab.data import R1DataModule
from r1lab.data.tinyworld import TinyWorld
from r1lab.modules.grpo import GRPO
from r1lab.rewards import RewardSet


def digit_share(prompt: str, completion: str, reference: dict) -> float:
    """An easy reward a random policy can climb: the share of digits in the completion."""
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


class Metrics(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.rows.append({k: float(v) for k, v in trainer.logged_metrics.items()})


def test_grpo_with_vllm_raises_the_mean_reward(backbone):
    torch.manual_seed(0)
    module = GRPO(backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
                  rewards=RewardSet(functions={"digits": digit_share}), group_size=8, max_new_tokens=12, beta=0.0,
                  evaluation={"k": 0, "max_new_tokens": 8}, log_completions_every=0,
                  rollout={"engine": "vllm", "options": {**OPTIONS, "tis_cap": 2.0}})
    dm = R1DataModule(TinyWorld(sizes={"train": 128, "val": 4, "test": 4}), mode="rl", template="plain",
                      batch_size=4, eval_batch_size=4)
    dm.connect(backbone.tokenizer)
    metrics = Metrics()
    trainer = L.Trainer(accelerator="cpu", max_steps=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[metrics])
    try:
        trainer.fit(module, datamodule=dm)
        engine = module.engine
        assert engine.name == "vllm" and engine.pushes == 25  # the build, then one push per update
    finally:
        module.engine.close()
    rewards = [row["train/reward"] for row in metrics.rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, (first, last)
    diffs = [row["train/engine_logprob_diff_max"] for row in metrics.rows]
    assert max(diffs) < 1e-4, diffs  # fp32: the engine samples from exactly the policy being trained
    assert all(abs(row["train/tis_weight_mean"] - 1) < 1e-3 for row in metrics.rows)
