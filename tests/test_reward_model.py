"""Reward models: Bradley–Terry math by hand, last-token pooling, overfitting, the export, GRPO with a
neural reward in its RewardSet, the iterative-RL pipeline and the reward model's held-out score job."""

import json
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from r1lab.data import R1DataModule
from r1lab.data.collate import Collator, Tokenized, left_pad
from r1lab.data.tinyworld import TinyWorld
from r1lab.jobs.synthetic_pairs import synthetic_candidates
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


def _pairs(n: int = 8) -> list[dict]:
    rng = __import__("random").Random(0)
    records = TinyWorld(seed=3, sizes={"train": n, "val": 0, "test": 0}).load("train")
    out = []
    for i, record in enumerate(records):
        candidates = synthetic_candidates(record, rng)  # the reference first, then its corruptions
        _, rejected = candidates[1 + i % (len(candidates) - 1)]
        out.append({"prompt": record["prompt"], "chosen": candidates[0][1], "rejected": rejected, "margin": 1.0})
    return out


@pytest.fixture
def one_thread():
    """Matrices this small gain nothing from a second thread; on a busy, shared CPU its spin-waits
    made this 30-step loop ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_likelihood_baseline_sums_response_logprobs_and_ranks_pairs(tiny_backbone, tmp_path):
    from r1lab.data.collate import Tokenized
    from r1lab.models.tokenizer import save_tokenizer
    from r1lab.rm.likelihood import main as likelihood_main
    from r1lab.rm.likelihood import ranking_accuracy, response_scores

    torch.manual_seed(0)
    model = tiny_backbone.build_model().eval()
    tok = Tokenized(tiny_backbone.tokenizer, "chat", 64, 64, "")
    pairs = _pairs(4)
    prompts, chosen = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    sums, mins = response_scores(model, tok, prompts, chosen, batch_size=3)  # padded batches
    for i, (prompt, response) in enumerate(zip(prompts, chosen)):  # one unpadded sequence at a time
        p, r = tok.prompt_ids(prompt), tok.response_ids(response)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([p + r])).logits[0, :-1].log_softmax(-1)
        picked = logp[len(p) - 1 :].gather(-1, torch.tensor(r)[:, None])[:, 0]
        assert sums[i].item() == pytest.approx(picked.sum().item(), abs=1e-3)
        assert mins[i].item() == pytest.approx(picked.min().item(), abs=1e-4)
    policy = tmp_path / "policy"
    model.save_pretrained(policy)
    save_tokenizer(tiny_backbone.tokenizer, policy)
    # a pair and its mirror: exactly one of the two is ranked right, unless the two scores tie
    mirrored = pairs[:1] + [dict(pairs[0], chosen=pairs[0]["rejected"], rejected=pairs[0]["chosen"])]
    result = ranking_accuracy(policy, mirrored, max_response_tokens=64)
    two = response_scores(model, tok, prompts[:1] * 2, [pairs[0]["chosen"], pairs[0]["rejected"]])
    expected = [0.0 if torch.isclose(s[0], s[1]) else 0.5 for s in two]
    assert result == {"pairs": 2, "sum_logprob": expected[0], "min_logprob": expected[1]}
    assert expected[0] == 0.5  # two different responses do not tie on the summed log-prob
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + "\n" + json.dumps(dict(pairs[1], chosen="")) + "\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: field 'chosen' is empty"):
        likelihood_main(["--policy", str(policy), "--pairs", str(bad)])


# -- the likelihood kind ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def likelihood_module(tiny_backbone):
    module = RewardModel(tiny_backbone, kind="likelihood", beta=0.5)
    module.configure_model()
    return module.eval()


def test_likelihood_reward_is_beta_times_the_response_logprob(likelihood_module, tokenizer):
    from r1lab.rm.model import likelihood_rewards

    tok = Tokenized(tokenizer, "chat", 64, 64, "")
    batch = Collator(tok, "preference")(_pairs(3))
    ids, mask, labels = batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"]
    with torch.no_grad():
        rewards = likelihood_module(ids, mask, labels)
        expected = []
        for row in range(3):  # by hand: one unpadded sequence, log_softmax at each response token
            n = int(mask[row].sum())
            logp = likelihood_module.model(ids[row : row + 1, :n]).logits[0].log_softmax(-1)
            response = [t for t in range(1, n) if labels[row, t] != -100]
            expected.append(0.5 * sum(logp[t - 1, ids[row, t]].item() for t in response))
        mean = likelihood_rewards(likelihood_module.model, ids, mask, labels, beta=0.5, reduction="mean")
        # left padding gives the same rewards
        rows = [ids[r, : int(mask[r].sum())].tolist() for r in range(3)]
        lids, lmask = left_pad(rows, tokenizer.pad_token_id)
        llabels = torch.stack([torch.cat([torch.full((lids.shape[1] - len(rows[r]),), -100),
                                          labels[r, : len(rows[r])]]) for r in range(3)])
        left = likelihood_module(lids, lmask, llabels)
        # with itself as the reference, the implicit reward β·log π/π_ref is exactly zero
        self_ref = likelihood_rewards(likelihood_module.model, ids, mask, labels, 0.5, "sum",
                                      reference=likelihood_module.model)
    assert rewards.tolist() == pytest.approx(expected, rel=1e-4)
    assert all(r < -1 for r in expected)  # a random model finds a response unlikely
    counts = (labels[:, 1:] != -100).sum(-1).float()
    torch.testing.assert_close(mean, rewards / counts)
    torch.testing.assert_close(left, rewards, atol=1e-4, rtol=1e-4)
    assert self_ref.abs().max().item() == 0.0
    with pytest.raises(ValueError, match="pass labels"):
        likelihood_module(ids, mask)


def test_likelihood_reward_model_learns_pairs_and_exports_a_causal_lm(tiny_backbone, tokenizer, tmp_path, one_thread):
    import json

    from r1lab.report import is_reward_model
    from r1lab.rm.model import reward_kind

    torch.manual_seed(0)
    module = RewardModel(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                         kind="likelihood", beta=0.5)
    module.configure_model()
    opt = module.configure_optimizers()
    batch = Collator(Tokenized(tokenizer, "chat", 64, 64, ""), "preference")(_pairs())
    first, _ = module._loss(batch)
    for _ in range(20):
        loss, _ = module._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, metrics = module._loss(batch)
    assert metrics["accuracy"].item() == 1.0 and final.item() < first.item() / 5
    # the export: a causal LM with its kind recorded, scored the same by GRPO's neural reward
    module.eval()
    path = module.export_hf(tmp_path / "rm" / "hf")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((path / "r1lab_reward.json").read_text()) == {
        "kind": "likelihood", "beta": 0.5, "reduction": "sum", "reference": None}
    assert reward_kind(path) == "likelihood" and is_reward_model(tmp_path / "rm")
    neural = NeuralReward(str(path), normalize="none", template="chat", system_prompt="",
                          max_prompt_tokens=64, max_response_tokens=64)
    pairs = _pairs()
    with torch.no_grad():
        ours = module(batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"])
    scored = neural.score_batch([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [{}] * len(pairs))
    torch.testing.assert_close(scored, ours, atol=1e-4, rtol=1e-4)
    assert neural.kind == "likelihood" and "kind=likelihood" in repr(neural)
    # iterative RL continues it as the same kind, with the same beta and reduction
    from r1lab.models import Backbone

    RewardModel(Backbone(name_or_path=str(path)), kind="likelihood", beta=0.5).configure_model()
    with pytest.raises(ValueError, match="module.beta: 0.1, but .* was trained with beta 0.5"):
        RewardModel(Backbone(name_or_path=str(path)), kind="likelihood", beta=0.1).configure_model()
    # a policy export is not a reward model; continuing a likelihood export as a scalar one fails early
    policy = export_hf_policy(tiny_backbone, tmp_path / "policy")
    assert reward_kind(policy) is None and not is_reward_model(tmp_path / "policy")
    with pytest.raises(FileNotFoundError, match="no reward-model export"):
        NeuralReward(str(policy))
    with pytest.raises(ValueError, match="module.kind: 'scalar'.*continue it with module.kind=likelihood"):
        RewardModel(Backbone(name_or_path=str(path))).configure_model()


def export_hf_policy(backbone, folder):
    from r1lab.modules.base import export_hf

    return export_hf(backbone.build_model(), backbone.tokenizer, folder / "hf")


def test_reward_model_rejects_unknown_kind_and_reduction(tiny_backbone):
    with pytest.raises(ValueError, match="module.kind: 'pairwise'"):
        RewardModel(tiny_backbone, kind="pairwise")
    with pytest.raises(ValueError, match="module.reduction: 'max'"):
        RewardModel(tiny_backbone, kind="likelihood", reduction="max")
    with pytest.raises(ValueError, match="module.beta"):
        RewardModel(tiny_backbone, kind="likelihood", beta=0)


def test_rm_score_compares_policies_on_the_same_prompts_and_seeds(likelihood_module, tiny_backbone, tmp_path):
    import json

    from r1lab.generation import SamplingParams
    from r1lab.jobs.base import load_policy
    from r1lab.jobs.rm_score import RMScoreJob, policy_samples

    rm = likelihood_module.export_hf(tmp_path / "rm" / "hf")
    policy = export_hf_policy(tiny_backbone, tmp_path / "sft2")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {a} + 2?", "answer": str(a + 2)}) + "\n"
                               for a in range(3)))
    job = RMScoreJob(str(rm), [str(policy), str(policy)], prompts=str(prompts), k=2, max_new_tokens=8)
    metrics = job.run(tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())["rows"]
    assert metrics["rm_score/sft2/change"] == 0.0 and metrics["rm_score/sft2/score"] == rows[0]["score"]
    # same prompts, same seeds: the same samples, so the paired change is exactly zero
    assert {k: v for k, v in rows[1].items() if not k.startswith("change")} == rows[0] and rows[0]["samples"] == 6
    assert rows[1]["change"] == 0.0 and rows[1]["change_se"] == 0.0 and "change" not in rows[0]
    # the score is the reward model's mean raw score of exactly those samples
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    _, engine = load_policy(str(policy), device="cpu")
    tok = Tokenized(tiny_backbone.tokenizer, "chat", 256, 8, "")
    texts = policy_samples(engine, records, tok, SamplingParams(8), 2, 0)
    expected = NeuralReward(str(rm), normalize="none").raw_scores([r["prompt"] for r in records for _ in range(2)],
                                                                  texts)
    assert rows[0]["score"] == pytest.approx(expected.mean().item(), rel=1e-5) and rows[0]["score"] < 0
    assert rows[0]["score_se"] == pytest.approx(expected.std().item() / 6**0.5, rel=1e-4)
    assert rows[0]["accuracy"] == 0.0 and rows[0]["score_correct"] is None  # a random policy is never right
    assert rows[0]["score_wrong"] == pytest.approx(rows[0]["score"])
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Reward model `rm`'s raw score on 2 samples" in summary and "(3 prompts)" in summary
    assert f"| sft2 | {rows[0]['score']:.3f} ± {rows[0]['score_se']:.3f} | – | – |" in summary
    assert summary.count("| sft2 | ") == 2 and "| +0.000 ± 0.000 |" in summary
    with pytest.raises(ValueError, match="job.policies: no model folder"):
        RMScoreJob(str(rm), [str(tmp_path / "none")], prompts=str(prompts))


def test_implicit_reward_against_a_reference_starts_at_zero_and_travels_with_the_export(tiny_backbone, tokenizer,
                                                                                      tmp_path):
    import json

    reference = export_hf_policy(tiny_backbone, tmp_path / "ref")  # the same seeded weights as the model
    module = RewardModel(tiny_backbone, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
                         kind="likelihood", beta=0.5, reference=str(reference))
    module.configure_model()
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())
    module.train()
    assert not module.reference.training  # frozen: stays in eval mode
    batch = Collator(Tokenized(tokenizer, "chat", 64, 64, ""), "preference")(_pairs(3))
    with torch.no_grad():
        r_chosen, r_rejected = module.pair_rewards(batch)
    assert r_chosen.abs().max().item() == 0.0 and r_rejected.abs().max().item() == 0.0  # β·log π/π_ref, π = π_ref
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.model.parameters()}  # the reference is not optimised
    path = module.export_hf(tmp_path / "rm" / "hf")
    assert json.loads((path / "r1lab_reward.json").read_text())["reference"] == str(reference)
    pairs = _pairs(3)
    neural = NeuralReward(str(path), normalize="none", template="chat", system_prompt="")
    scores = neural.score_batch([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [{}] * 3)
    assert scores.abs().max().item() == 0.0
