"""Reward models: Bradley–Terry math by hand, last-token pooling, overfitting, the export, GRPO with a
neural reward in its RewardSet, the iterative-RL pipeline and the reward model's held-out score job."""

import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import preference_pairs as _pairs
from r1lab.data import R1DataModule
from r1lab.data.collate import Collator, Tokenized, left_pad
from r1lab.data.tinyworld import TinyWorld
from r1lab.modules.grpo import GRPO
from r1lab.modules.reward_model import RewardModel
from r1lab.rewards import RewardSet
from r1lab.rewards.format import final_answer_view
from r1lab.rm import (
    NeuralReward,
    RewardStateCheckpoint,
    RunningMoments,
    bradley_terry_loss,
    last_token_index,
)

sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


# -- Bradley–Terry ---------------------------------------------------------------------------------
def test_bradley_terry_loss_and_metrics_by_hand():
    r_c, r_r = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    loss, m = bradley_terry_loss(r_c, r_r)
    # diffs 1, 0, -2: -log σ(1) = 0.313262, -log σ(0) = 0.693147, -log σ(-2) = 2.126928
    assert loss.item() == pytest.approx((0.313262 + 0.693147 + 2.126928) / 3, rel=1e-5)
    assert m["accuracy"].item() == pytest.approx(1 / 3)  # a tie is not a win
    assert m["margin"].item() == pytest.approx(-1 / 3)
    assert (m["reward_mean"].item(), m["reward_min"].item(), m["reward_max"].item()) == pytest.approx((0.5, -1, 2))
    # a margin of 0.5 on the first pair only: -log σ(0.5) = 0.474077
    loss, _ = bradley_terry_loss(r_c, r_r, margin=torch.tensor([0.5, 0.0, 0.0]))
    assert loss.item() == pytest.approx((0.474077 + 0.693147 + 2.126928) / 3, rel=1e-5)
    # centering adds c·mean((r_c + r_r)²) = 0.1·(9 + 0 + 0)/3 = 0.3
    loss, _ = bradley_terry_loss(r_c, r_r, center_coef=0.1)
    assert loss.item() == pytest.approx((0.313262 + 0.693147 + 2.126928) / 3 + 0.3, rel=1e-5)
    assert -math.log(sigmoid(1.0)) == pytest.approx(0.313262, rel=1e-5)


def test_bradley_terry_gradient_pushes_the_pair_apart():
    r_c, r_r = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(r_c, r_r)[0].backward()
    assert r_c.grad.item() == pytest.approx(-0.5) and r_r.grad.item() == pytest.approx(0.5)  # ∓σ(0)


# -- the network ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_module(tiny_backbone):
    module = RewardModel(tiny_backbone)
    module.configure_model()
    return module


def test_head_reads_the_last_real_token_with_left_and_right_padding(reward_module, tokenizer):
    texts = ["What is 3 + 4? <think> 3 plus 4 is 7. </think> <answer> 7 </answer>", "Hi", "What is 1 + 1?"]
    rows = [tokenizer(t).input_ids for t in texts]
    pad = tokenizer.pad_token_id
    right = torch.tensor([r + [pad] * (max(map(len, rows)) - len(r)) for r in rows])
    right_mask = (torch.arange(right.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]).long()
    left, left_mask = left_pad(rows, pad)
    assert last_token_index(right_mask).tolist() == [len(r) - 1 for r in rows]
    assert last_token_index(left_mask).tolist() == [left.shape[1] - 1] * 3
    reward_module.eval()
    with torch.no_grad():
        r_right, r_left = reward_module(right, right_mask), reward_module(left, left_mask)
        alone = torch.cat([reward_module(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
    assert r_right.shape == (3,)
    torch.testing.assert_close(r_right, r_left, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=1e-4)
    assert r_right.std() > 0  # the rewards depend on the sequence (a constant head would pass the rest)


def test_reward_model_overfits_a_handful_of_pairs(tiny_backbone, tokenizer, one_thread):
    torch.manual_seed(0)
    module = RewardModel(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    module.configure_model()
    opt = module.configure_optimizers()
    batch = Collator(Tokenized(tokenizer, "plain", 64, 64), "preference")(_pairs())
    losses = []
    for _ in range(30):
        loss, _ = module._loss(batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, metrics = module._loss(batch)
    assert losses[0] == pytest.approx(math.log(2), abs=0.1)  # a fresh head: rewards ~0, σ(0) = 1/2
    assert metrics["accuracy"].item() == 1.0 and final.item() < losses[0] / 20


# -- export and the neural reward -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rm_export(reward_module, tmp_path_factory):
    path = tmp_path_factory.mktemp("rm") / "hf"
    with torch.no_grad():  # a head far from zero, so that scores differ visibly between sequences
        reward_module.model.score.weight.mul_(50)
    reward_module.export_hf(path)
    return path


def test_export_loads_as_sequence_classification_with_the_same_scores(reward_module, rm_export, tokenizer):
    hf = AutoModelForSequenceClassification.from_pretrained(rm_export).eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == tokenizer.pad_token_id
    batch = Collator(Tokenized(tokenizer, "chat", 64, 64, ""), "preference")(_pairs(4))
    reward_module.eval()
    with torch.no_grad():
        ours = reward_module(batch["chosen_input_ids"], batch["chosen_attention_mask"])
        theirs = hf(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
    torch.testing.assert_close(theirs.squeeze(-1), ours, atol=1e-5, rtol=1e-4)
    # the neural reward tokenizes as the export says (chat template, no system prompt): same scores
    neural = NeuralReward(str(rm_export), normalize="none")
    scored = neural.score_batch([p["prompt"] for p in _pairs(4)], [p["chosen"] for p in _pairs(4)], [{}] * 4)
    torch.testing.assert_close(scored, ours, atol=1e-5, rtol=1e-4)


def test_neural_reward_normalisations_and_views(rm_export):
    prompts = ["What is 1 + 2?"] * 4
    completions = [f"<think> 1 plus 2 is {v}. </think> <answer> {v} </answer>" for v in (3, 4, 5, 6)]
    raw = NeuralReward(str(rm_export), normalize="none").score_batch(prompts, completions, [{}] * 4)
    batch = NeuralReward(str(rm_export), normalize="batch").score_batch(prompts, completions, [{}] * 4)
    torch.testing.assert_close(batch, (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-3, rtol=1e-3)
    running = NeuralReward(str(rm_export), normalize="running")
    running.score_batch(prompts[:2], completions[:2], [{}] * 2)
    second = running.score_batch(prompts[2:], completions[2:], [{}] * 2)
    assert running.moments.count == 4 and running.moments.mean == pytest.approx(raw.mean().item(), rel=1e-4)
    torch.testing.assert_close(second, (raw[2:] - raw.mean()) / raw.std(unbiased=False), atol=1e-3, rtol=1e-3)
    assert final_answer_view(completions[0]) == "<answer> 3 </answer>"
    assert final_answer_view("no tags at all") == "no tags at all"
    answer_only = NeuralReward(str(rm_export), view="answer", normalize="none")
    assert answer_only(prompts[0], completions[0], {}) == pytest.approx(
        NeuralReward(str(rm_export), normalize="none")(prompts[0], "<answer> 3 </answer>", {}), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="no reward-model export"):
        NeuralReward(str(rm_export.parent / "nowhere"))


def test_running_moments_merge_batches_exactly():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, -3.0, 0.5, 7.0])
    moments = RunningMoments()
    for part in values.split([3, 1, 3]):
        moments.update(part)
    assert moments.mean == pytest.approx(values.mean().item())
    assert moments.std == pytest.approx(values.std(unbiased=False).item())
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.std == moments.std and restored.count == 7


def test_running_moments_travel_in_checkpoints(rm_export):
    from types import SimpleNamespace

    before = NeuralReward(str(rm_export))
    before.moments.update(torch.tensor([1.0, 3.0]))
    checkpoint: dict = {}
    callback = RewardStateCheckpoint()
    callback.on_save_checkpoint(None, SimpleNamespace(rewards=RewardSet({"rm": before, "acc": "accuracy"})), checkpoint)
    after = NeuralReward(str(rm_export))
    callback.on_load_checkpoint(None, SimpleNamespace(rewards=RewardSet({"rm": after})), checkpoint)
    assert (after.moments.count, after.moments.mean, after.moments.std) == (2, 2.0, 1.0)


def test_grpo_step_with_the_neural_reward_in_the_reward_set(tiny_backbone, rm_export):
    import pickle

    neural = NeuralReward(str(rm_export), normalize="batch")
    rewards = RewardSet({"accuracy": "accuracy", "format": "format", "rm": neural}, weights={"rm": 0.5})
    module = GRPO(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), rewards=rewards,
                  group_size=2, max_new_tokens=8, beta=0.0, log_completions_every=0)
    world = TinyWorld(seed=1, sizes={"train": 8, "val": 2, "test": 2})
    data = R1DataModule(world, mode="rl", batch_size=2, eval_batch_size=2)
    data.connect(tiny_backbone.tokenizer)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert "train/reward/rm" in metrics and "train/reward/accuracy" in metrics
    assert abs(metrics["train/reward/rm"].item()) < 1e-5  # batch z-scores average to zero
    # ... so the raw score is logged too: it is what "RL raises the reward model's score" is read from
    raw_mean = neural.last_raw.mean().item()
    assert metrics["train/reward/rm_raw"].item() == pytest.approx(raw_mean, abs=1e-5)
    assert abs(raw_mean) > 1e-3
    roll = module.rollout(next(iter(data.train_dataloader())))
    total, per_function = module.score(roll)
    assert per_function["rm"].shape == (4,) and per_function["rm"].std() > 0.5  # z-scored: unit spread
    torch.testing.assert_close(total, per_function["accuracy"] + per_function["format"] + 0.5 * per_function["rm"])
    assert len(pickle.dumps(rewards)) < 10_000  # the checkpointed hyperparameters hold no weights


def test_iterative_pipeline_chains_grpo_fresh_pairs_replay_and_rm():
    from r1lab.pipeline import load_pipeline

    stages = load_pipeline("iterative", rounds=2).stages
    assert [s.stage for s in stages] == ["grpo_rm", "preferences", "replay_mix", "rm"] * 2
    grpo1, pairs1, mix1, rm1, grpo2, _, mix2, rm2 = stages
    assert "backbone.name_or_path={inputs}/sft2/hf" in grpo1.args
    assert "module.rewards.functions.reward_model.path={inputs}/rm/hf" in grpo1.args
    assert "job.policies=[{dir}/round1_grpo/hf]" in pairs1.args  # fresh pairs from the new policy
    assert {"job.fresh={dir}/round1_pairs/pairs.jsonl", "job.old={inputs}/preferences/pairs.jsonl"} <= set(mix1.args)
    assert "backbone.name_or_path={inputs}/rm/hf" in rm1.args  # the RM continues from its previous export
    assert "data.source.path={dir}/round1_mix/pairs.jsonl" in rm1.args
    assert "backbone.name_or_path={dir}/round1_grpo/hf" in grpo2.args
    assert "module.rewards.functions.reward_model.path={dir}/round1_rm/hf" in grpo2.args
    assert "job.old={dir}/round1_mix/history.jsonl" in mix2.args
    assert "backbone.name_or_path={dir}/round1_rm/hf" in rm2.args
    assert len(load_pipeline("iterative", rounds=3).stages) == 12
