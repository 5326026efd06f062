"""Preference pairs: the R1 ranking rule by hand, synthetic corruptions, sampling from a policy,
resuming, replay mixing, the reward-model data source and its errors."""

import json
import random

import pytest
import torch

from conftest import arith_records
from r1lab.data import R1DataModule
from r1lab.data.preferences import PreferenceFile
from r1lab.data.sources import DataError
from r1lab.data.tinyworld import TinyWorld
from r1lab.jobs.durable import ChunkedJsonl, JobError
from r1lab.jobs.pairs import preference_margin, r1_preference, rank_pairs
from r1lab.jobs.preferences import PreferenceJob, write_synthetic
from r1lab.jobs.replay import ReplayMixJob, replay_mix
from r1lab.jobs.synthetic_pairs import ERRORS, STYLES, synthetic_candidates
from r1lab.rewards import format_reward_strict

REF = {"answer": "7", "task": "arith", "language": "en"}
GOOD = "<think> 3 plus 4 is 7. </think> <answer> 7 </answer>"


def test_r1_preference_ranks_as_the_rule_says():
    wrong = "<think> 3 plus 4 is 8. </think> <answer> 8 </answer>"
    broken = "<think> 3 plus 4 is 7. <answer> 7 </answer>"
    mixed = "<think> 3 加 4 is 7. </think> <answer> 7 </answer>"
    verbose = "<think> Let me see. 3 plus 4 is 7. Let me check: 3 plus 4 is 7. </think> <answer> 7 </answer>"
    score = {name: r1_preference("What is 3 + 4?", text, REF) for name, text in
             dict(good=GOOD, wrong=wrong, broken=broken, mixed=mixed, verbose=verbose, untagged="7").items()}
    assert score["wrong"] == score["untagged"] == (0,)  # wrong answers tie: no pair between them
    assert score["good"] > score["verbose"] > score["mixed"] > score["broken"] > score["wrong"]
    assert score["good"][:3] == (1, 1, 1) and score["broken"][:2] == (1, 0) and score["mixed"][:3] == (1, 1, 0)
    # conciseness in ×1.25 buckets: one extra character is a tie, not a preference
    assert r1_preference("", GOOD + " ", REF) == score["good"]
    assert preference_margin(score["good"], score["wrong"]) == 1.0
    assert preference_margin(score["good"], score["broken"]) == 0.5
    assert preference_margin(score["good"], score["verbose"]) == 0.125
    assert preference_margin(0.75, 0.25) == 0.5


def test_rank_pairs_skips_ties_and_identical_texts():
    pairs = rank_pairs(["a", "b", "c", "a"], [(1,), (0,), (0,), (1,)], random.Random(0), None)
    assert sorted(pairs) == [(0, 1), (0, 2), (3, 1), (3, 2)]
    assert len(rank_pairs(["a", "b", "c", "d"], [3, 2, 1, 0], random.Random(0), 2)) == 2


def test_synthetic_corruptions_are_what_they_claim():
    record = arith_records(1, seed=0)[0]
    candidates = dict(synthetic_candidates(record, random.Random(0)))
    errors = {k.split("+")[0]: k.split("+")[1] for k in candidates if "+" in k}  # error -> its style
    assert {k for k in candidates if "+" not in k} == {"reference", *STYLES} - {"clean"}
    assert set(errors) == set(ERRORS) and set(errors.values()) <= set(STYLES)
    prompt = record["prompt"]
    score = {k: r1_preference(prompt, v, record) for k, v in candidates.items()}
    assert score["reference"][:3] == (1, 1, 1)
    assert all(score[k] == (0,) for k in candidates if "+" in k)  # wrong, whatever the style
    assert score["broken_tags"] == (0,) or score["broken_tags"][:2] == (1, 0)  # an untagged answer is wrong
    assert score["mixed_language"][:3] == (1, 1, 0)
    assert score["verbose"][:3] == (1, 1, 1) and score["verbose"][3] < score["reference"][3]
    # styles are drawn independently of correctness: over many tasks wrong answers come in every style,
    # and a clean wrong solution is well-formed (only its correctness is off)
    drawn = [(r, k, t) for r in arith_records(40, seed=0) for k, t in synthetic_candidates(r, random.Random(r["id"]))]
    assert {k.split("+")[1] for _, k, _ in drawn if "+" in k} == set(STYLES)
    clean_wrong = [(r, t) for r, k, t in drawn if k.endswith("+clean")]
    assert clean_wrong and all(format_reward_strict(r["prompt"], t, r) == 1.0 for r, t in clean_wrong)
    assert all(r1_preference(r["prompt"], t, r) == (0,) for r, t in clean_wrong)


def test_synthetic_pairs_are_deterministic_resumable_and_ranked(tmp_path, monkeypatch):
    records = arith_records(24, seed=0)
    out = tmp_path / "pairs.jsonl"
    n = write_synthetic(records, out, pairs_per_prompt=3, seed=5, chunk_size=8)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows) == 72
    for row in rows:
        assert row["chosen"] != row["rejected"] and row["rule"] == "r1_preference"
        assert tuple(row["chosen_score"]) > tuple(row["rejected_score"])
        assert {"prompt", "answer", "task", "margin", "prompt_id", "chosen_kind"} <= set(row)
    assert {r["chosen_kind"] for r in rows} >= {"reference", "verbose"}
    assert write_synthetic(records, out, pairs_per_prompt=3, seed=5, chunk_size=8) == 72  # done: no-op
    assert out.read_bytes() == (first := out.read_bytes())

    # a run killed while writing its third chunk leaves a torn line; the rerun cuts it and finishes
    resumed = tmp_path / "resumed.jsonl"
    write = ChunkedJsonl.write

    def crash_on_third_chunk(self, chunk, rows):
        if chunk == 2:
            with self.files["pairs"].open("a") as f:
                f.write(json.dumps(rows["pairs"][0])[:20])
            raise KeyboardInterrupt
        write(self, chunk, rows)

    monkeypatch.setattr(ChunkedJsonl, "write", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(records, resumed, pairs_per_prompt=3, seed=5, chunk_size=8)
    monkeypatch.undo()
    assert len(resumed.read_text().splitlines()) == 48 + 1  # two chunks of 8 prompts x 3 pairs, and a torn line
    assert write_synthetic(records, resumed, pairs_per_prompt=3, seed=5, chunk_size=8) == 72
    assert resumed.read_bytes() == first
    with pytest.raises(JobError, match="other settings"):
        write_synthetic(records, out, pairs_per_prompt=2, seed=5, chunk_size=8)
    (tmp_path / "theirs.jsonl").write_text("{}\n")
    with pytest.raises(JobError, match="not written by this job"):
        write_synthetic(records, tmp_path / "theirs.jsonl")


def test_the_job_writes_answer_views(tmp_path):
    job = PreferenceJob(mode="synthetic", source=TinyWorld(sizes={"train": 10, "val": 0, "test": 0}),
                        view="answer", pairs_per_prompt=None)
    metrics = job.run(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert metrics == {"preferences/pairs": float(len(rows)), "preferences/prompts": 10.0}
    assert rows and all("<think>" not in r["chosen"] for r in rows if r["chosen_kind"] != "broken_tags")
    assert all(r["chosen"] != r["rejected"] for r in rows)


def _sampling_job(policies, **kw):
    source = TinyWorld(sizes={"train": 6, "val": 64, "test": 200}, families={"arith": 1.0}, max_operand=10)
    return PreferenceJob(mode="sample", source=source, policies=[str(p) for p in policies], device="cpu",
                         rule="tests.test_preferences.by_length", max_new_tokens=6, batch_size=4, **kw)


def test_pairs_sampled_from_a_policy_checkpoint(tiny_backbone, tmp_path):
    from r1lab.models.tokenizer import save_tokenizer

    policy = tmp_path / "policy"
    tiny_backbone.build_model().save_pretrained(policy)
    save_tokenizer(tiny_backbone.tokenizer, policy)
    out = tmp_path / "sampled.jsonl"
    n = _sampling_job([policy], k=4, pairs_per_prompt=2, out=str(out)).run(tmp_path)["preferences/pairs"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows) > 0 and all(len(r["chosen"]) < len(r["rejected"]) for r in rows)
    assert {r["source"] for r in rows} == {str(policy)} and rows[0]["rule"] == "tests.test_preferences.by_length"
    assert _sampling_job([policy], k=4, pairs_per_prompt=2, out=str(out)).run(tmp_path)["preferences/pairs"] == n
    torch.manual_seed(123)  # the global RNG does not matter: each chunk has its own generator
    _sampling_job([policy], k=4, pairs_per_prompt=2, out=str(tmp_path / "again.jsonl")).run(tmp_path)
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    with pytest.raises(JobError, match="job.policies: no model folder"):
        _sampling_job([tmp_path / "nowhere"], k=4).run(tmp_path)
    with pytest.raises(ValueError, match="job.k"):
        _sampling_job([policy], k=1)


def test_pairs_sampled_from_several_checkpoints_are_ranked_together(tiny_backbone, tmp_path):
    from r1lab.models.tokenizer import save_tokenizer

    policies = []
    for i in range(2):  # two checkpoints with the same tokenizer and different weights
        torch.manual_seed(i)
        policies.append(tmp_path / f"policy{i}")
        tiny_backbone.build_model().save_pretrained(policies[-1])
        save_tokenizer(tiny_backbone.tokenizer, policies[-1])
    _sampling_job(policies, k=3, pairs_per_prompt=None, out=str(tmp_path / "both.jsonl")).run(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    kinds = {(r["chosen_kind"].split(":")[0], r["rejected_kind"].split(":")[0]) for r in rows}
    assert {"0", "1"} <= {k for pair in kinds for k in pair} and any(a != b for a, b in kinds)  # across checkpoints
    assert all(len(r["chosen"]) < len(r["rejected"]) for r in rows)
    assert rows[0]["source"] == f"{policies[0]},{policies[1]}"
    # the first checkpoint's samples are those it gives alone: adding a checkpoint only adds candidates
    _sampling_job(policies[:1], k=3, pairs_per_prompt=None, out=str(tmp_path / "one.jsonl")).run(tmp_path)
    alone = {r["chosen"] for r in map(json.loads, (tmp_path / "one.jsonl").read_text().splitlines())}
    assert alone <= {r["chosen"] for r in rows} | {r["rejected"] for r in rows}


def by_length(prompt: str, completion: str, reference: dict) -> float:
    """A rule for the test above: shorter is better (a random policy's samples rarely tie on it)."""
    return -len(completion)


def test_replay_mix_keeps_new_pairs_and_a_fraction_of_old_ones():
    new = [{"id": f"n{i}"} for i in range(30)]
    old = [{"id": f"o{i}"} for i in range(50)]
    mixed = replay_mix(new, old, fraction=0.1, seed=0)
    assert len(mixed) == 35 and [r["id"] for r in mixed[5:]] == [r["id"] for r in new]
    assert all(r["replay"] for r in mixed[:5]) and len({r["id"] for r in mixed[:5]}) == 5
    assert {r["id"] for r in mixed[:5]} <= {r["id"] for r in old}
    assert replay_mix(new, old, 0.1, seed=0) == mixed and replay_mix(new, old, 0.1, seed=1) != mixed
    assert replay_mix(new, [], 0.1) == [dict(r, replay=False) for r in new]
    with pytest.raises(ValueError, match="job.fraction"):
        replay_mix(new, old, 1.5)


def test_the_replay_job_writes_the_mix_and_the_history(tmp_path):
    _write(tmp_path / "fresh.jsonl", [{"id": f"n{i}"} for i in range(30)])
    _write(tmp_path / "old.jsonl", [{"id": f"o{i}"} for i in range(50)])
    job = ReplayMixJob(str(tmp_path / "fresh.jsonl"), str(tmp_path / "old.jsonl"), fraction=0.1, seed=3)
    assert job.run(tmp_path / "out") == {"replay/fresh": 30.0, "replay/replayed": 5.0, "replay/history": 80.0}
    mixed = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    history = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    assert mixed == replay_mix([{"id": f"n{i}"} for i in range(30)], [{"id": f"o{i}"} for i in range(50)], 0.1, 3)
    assert [r["id"] for r in history] == [f"o{i}" for i in range(50)] + [f"n{i}" for i in range(30)]
    with pytest.raises(JobError, match="job.old: no pairs file"):
        ReplayMixJob(str(tmp_path / "fresh.jsonl"), str(tmp_path / "none.jsonl")).run(tmp_path / "x")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_preference_file_holds_out_unseen_prompts_and_feeds_the_datamodule(tmp_path, tokenizer):
    rows = [{"prompt": f"p{i // 2}", "chosen": "good", "rejected": "bad", "margin": 0.5} for i in range(20)]
    _write(tmp_path / "pairs.jsonl", rows)
    source = PreferenceFile(str(tmp_path / "pairs.jsonl"), sizes={"val": 3, "test": 2})
    train, val, test = (source.load(s, ("prompt", "chosen", "rejected")) for s in ("train", "val", "test"))
    assert len(val) == 3 and len(test) == 2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val + test}  # p7's train pair is dropped
    assert len(train) == 14
    data = R1DataModule(source, mode="preference", template="plain", batch_size=4, eval_batch_size=8)
    data.connect(tokenizer)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["chosen_input_ids"].shape[0] == 3 and batch["margin"].tolist() == [0.5] * 3


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "p", "chosen": "good"}, "missing field 'rejected'"),
    ({"prompt": "p", "chosen": "  ", "rejected": "bad"}, "field 'chosen' is empty"),
    ({"question": "p", "chosen": "good", "rejected": "bad"}, "missing field 'prompt'"),
])
def test_bad_preference_files_name_file_and_line(tmp_path, tokenizer, row, message):
    path = tmp_path / "pairs.jsonl"
    _write(path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}] * 2 + [row])
    data = R1DataModule(PreferenceFile(str(path)), mode="preference", batch_size=1)
    data.connect(tokenizer)
    with pytest.raises(DataError, match=f"{path}:3: {message}"):
        data.setup("fit")


def test_missing_preference_file_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="stage=preferences"):
        PreferenceFile(str(tmp_path / "none.jsonl")).load("train", ("prompt",))


def test_the_preference_stage_takes_prompts_from_the_train_split_only(make_cfg, pipeline_root):
    """The pairs' prompts are the data config's train prompts: none of the held-out prompts every stage
    is scored on reaches the reward model."""
    from r1lab.train import build

    cfg = make_cfg("stage=preferences", f"paths.output_root={pipeline_root}", data=[])
    job = build(cfg, "job")
    prompts = {r["prompt"] for r in job.records()}
    world = build(cfg, "data").source
    held_out = {r["prompt"] for split in ("val", "test") for r in world.load(split)}
    assert len(prompts) == 4000 and not prompts & held_out
    assert prompts == {r["prompt"] for r in world.load("train")}
