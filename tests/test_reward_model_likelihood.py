"""The likelihood reward model (beta * the response log-prob, optionally against a reference), the
policy-likelihood baseline, and the job that scores policies' held-out answers with a reward model."""

import json

import pytest
import torch

from conftest import preference_pairs as _pairs
from r1lab.data.collate import Collator, Tokenized, left_pad
from r1lab.modules.reward_model import RewardModel
from r1lab.rm import NeuralReward


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
