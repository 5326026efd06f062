"""The process reward model: step labels from the rule verifier, learning an easy labelled set, its
export loading and scoring every step in one forward, and GRPO reading its step rewards."""

import random

import pytest
import torch

from conftest import arith_records
from r1lab.data.collate import Tokenized
from r1lab.jobs.synthetic_pairs import arithmetic_slip, compose_solution
from r1lab.modules.process_reward_model import ProcessRewardModel
from r1lab.rewards.steps import split_steps
from r1lab.rm import ProcessReward
from r1lab.rm.process import step_batch, step_label_rows
from test_grpo import _module


def labelled_rows(n=24, seed=0):
    """Each task's reference (every step right) and an arithmetic slip of it (wrong from one step on)."""
    rng = random.Random(seed)
    records = [r for r in arith_records(n, seed=seed) if r["difficulty"] >= 2]
    completions, refs = [], []
    for record in records:
        slip = arithmetic_slip(record, rng)
        completions += [record["response"]] + ([compose_solution(*slip)] if slip else [])
        refs += [record] * (2 if slip else 1)
    return step_label_rows(refs, completions)


def test_step_labels_come_from_the_rule_verifier():
    rows = labelled_rows()
    labels = [x for row in rows for x in row["labels"]]
    assert len(rows) > 20 and 0.3 < sum(labels) / len(labels) < 0.9  # both kinds of step, in numbers
    assert sum(0.0 not in row["labels"] for row in rows) >= len(rows) // 2  # the references: every step right
    assert any(0.0 in row["labels"] and row["labels"][0] == 1.0 for row in rows)  # a slip after a right step


@pytest.fixture(scope="module")
def trained(tiny_backbone):
    torch.manual_seed(0)
    module = ProcessRewardModel(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))
    module.configure_model()
    tok = Tokenized(tiny_backbone.tokenizer, "plain", 64, 64)
    rows = labelled_rows()
    batch = step_batch(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                       labels=[r["labels"] for r in rows])
    opt = module.configure_optimizers()
    steps = 150
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)  # settles the last steps' noise
    accuracies = []
    for _ in range(steps):
        loss, metrics = module._loss(batch)
        accuracies.append(metrics["step_accuracy"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return module, tok, rows, batch, accuracies


def test_the_prm_learns_an_easy_labelled_set(trained, one_thread):
    module, _, rows, batch, accuracies = trained
    module.eval()
    with torch.no_grad():
        _, metrics = module._loss(batch)
    assert batch["step_mask"].sum().item() == sum(len(r["labels"]) for r in rows)
    assert accuracies[0] < 0.8  # a fresh head does not know the labels
    assert metrics["step_accuracy"].item() >= 0.95, accuracies[-5:]


def test_the_export_loads_and_scores_every_step_in_one_forward(trained, tmp_path, tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    module, tok, rows, batch, _ = trained
    path = module.export_hf(tmp_path / "prm", tok)
    assert AutoModelForSequenceClassification.from_pretrained(path).config.num_labels == 1
    reward = ProcessReward(str(path))
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    spans = [split_steps(c) for c in completions]
    scores = reward.score_steps(prompts, completions, [{}] * len(rows), spans)
    with torch.no_grad():
        expected = torch.sigmoid(module(batch))
    assert [len(s) for s in scores] == [len(r["labels"]) for r in rows]
    for i, s in enumerate(scores):
        torch.testing.assert_close(torch.tensor(s), expected[i, : len(s)], atol=1e-5, rtol=1e-4)
    calls = []
    reward._model.base_model.register_forward_hook(lambda *a: calls.append(1))
    reward.score_steps(prompts, completions, [{}] * len(rows), spans)
    assert len(calls) == 1  # every step of every completion in one batched forward
    right = [(x > 0.5) == (y == 1.0) for s, r in zip(scores, rows) for x, y in zip(s, r["labels"])]
    assert sum(right) / len(right) >= 0.95
    with pytest.raises(FileNotFoundError, match="no process reward model"):
        ProcessReward(str(tmp_path))


def test_grpo_takes_its_step_rewards_from_the_prm(trained, tmp_path, tiny_backbone, tokenizer):
    from test_process_supervision import _roll

    module, tok, rows, _, _ = trained
    path = module.export_hf(tmp_path / "prm", tok)
    grpo = _module(tiny_backbone, supervision="process", group_size=2, step_rewards=ProcessReward(str(path)))
    right, slip = rows[0], rows[1]  # a reference and its arithmetic slip: the same prompt
    assert right["prompt"] == slip["prompt"] and 0.0 in slip["labels"] and 0.0 not in right["labels"]
    roll = _roll(tokenizer, [right["completion"], slip["completion"]], prompt=right["prompt"])
    steps = grpo.step_scores(roll)
    k = len(slip["labels"])
    assert steps["mask"].all() and steps["rewards"].shape == (2, k)
    assert ((steps["rewards"][1] > 0.5).float().tolist() == slip["labels"])  # the PRM's scores, not the rule's
    assert steps["rewards"][0].min() > 0.5
    advantages, _ = grpo.apply_supervision(roll, torch.zeros(2))
    first_wrong = int(steps["ends"][1][slip["labels"].index(0.0)])
    assert (advantages[1, : first_wrong + 1] < 0).all()  # every token up to the wrong step is pushed down


def test_the_prm_stage_trains_on_step_labels_and_exports_what_grpo_loads(make_cfg, tmp_path):
    """stage=prm through the real configs: the DataModule's steps mode, validation, the export."""
    from r1lab.train import run

    cfg = make_cfg("stage=prm", "backbone=tiny", "backbone.name_or_path=null", "trainer.max_steps=60",
                   "module.optimizer.lr=3e-3",
                   "trainer.val_check_interval=20", "data.source.tasks.sizes={train:128,val:16,test:16}",
                   "data.batch_size=16", "callbacks.progress_bar=null", data=[])
    metrics = run(cfg)
    assert {"val/step_accuracy", "test/step_accuracy", "test/all_steps_accuracy"} <= set(metrics)
    assert metrics["train/loss"] < 0.6  # from ln 2 = 0.69 at the start
    reward = ProcessReward(str(tmp_path / "hf"))
    rows = [r for r in labelled_rows(6, seed=3)][:4]
    spans = [split_steps(r["completion"], "sentence") for r in rows]
    scores = reward.score_steps([r["prompt"] for r in rows], [r["completion"] for r in rows], [{}] * 4, spans)
    assert [len(s) for s in scores] == [len(s) for s in spans] and all(0 < x < 1 for s in scores for x in s)


def test_the_validation_step_accuracy_is_over_steps_not_an_average_of_batches(tiny_backbone, one_thread):
    import lightning as L

    torch.manual_seed(1)
    module = ProcessRewardModel(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    module.configure_model()
    module.tok = Tokenized(tiny_backbone.tokenizer, "plain", 64, 64)
    rows = sorted(labelled_rows(), key=lambda r: len(r["labels"]))
    batches = [{"records": rows[:3]}, {"records": rows[3:]}]  # few short completions, then many long ones
    with torch.no_grad():
        tensors = module.step_tensors(rows)
        right = ((module(tensors) > 0) == (tensors["step_labels"] > 0.5)) & tensors["step_mask"]
    exact = right.sum().item() / tensors["step_mask"].sum().item()
    per_batch = []
    for b in batches:
        with torch.no_grad():
            t = module.step_tensors(b["records"])
            r = ((module(t) > 0) == (t["step_labels"] > 0.5)) & t["step_mask"]
        per_batch.append(r.sum().item() / t["step_mask"].sum().item())
    assert abs(sum(per_batch) / 2 - exact) > 1e-3  # the two averages differ on these batches
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert metrics["val/step_accuracy"] == pytest.approx(exact, abs=1e-6)
    whole = sum(all(x) for x in (right | ~tensors["step_mask"]).tolist()) / len(rows)
    assert metrics["val/all_steps_accuracy"] == pytest.approx(whole, abs=1e-6)  # this one is per completion
