"""Math-Shepherd's Monte Carlo step labels: a step is labelled by the continuations from its prefix.

A scripted completer stands in for the policy: it reads the chain so far and carries it on honestly
(from the last stated result), so a prefix that ends in a wrong step can only reach a wrong answer,
and the Monte Carlo labels must equal the rule verifier's. A completer that fails every other
continuation tells the hard estimate from the soft one.
"""

import json
import random
import re

import pytest
import torch

from conftest import arith_records
from r1lab.data.collate import Tokenized
from r1lab.data.sources import DataError, FileSource
from r1lab.generation import Rollout, RolloutEngine
from r1lab.jobs.durable import JobError
from r1lab.jobs.mc_step_labels import (
    MonteCarloConfig,
    estimate_labels,
    monte_carlo_labels,
    run_mc_step_labels,
    step_prefixes,
    summarize,
)
from r1lab.jobs.synthetic_pairs import arithmetic_slip, compose_solution
from r1lab.rewards.steps import parse_equation, reference_chain, split_steps

EQUATION = re.compile(r"(-?\d+) (plus|minus) (\d+) is (-?\d+)")


class ScriptedCompleter(RolloutEngine):
    """Continues an arithmetic chain from its last stated result (a fresh solution when none is stated
    yet, with a slip in one of every ``slip_every`` of them); ``fail_every``: every such continuation
    (by index within its prompt's n) ends on a wrong answer."""

    def __init__(self, tokenizer, fail_every: int = 0, slip_every: int = 0) -> None:
        super().__init__(None, tokenizer)
        self.fail_every, self.slip_every, self.calls = fail_every, slip_every, 0

    def _continue(self, text: str, j: int, rng: random.Random) -> str:
        chain = reference_chain(text)
        think = text.split("<think>")[-1] if "<think>" in text else ""
        done = EQUATION.findall(think)
        out = "" if done else "<think>"
        value = int(done[-1][3]) if done else chain[0][0]
        slips = not done and self.slip_every and rng.random() < 1 / self.slip_every
        slip_at = rng.randrange(len(chain)) if slips else -1
        for i, (_, op, b, _) in enumerate(chain[len(done):]):
            result = value + b if op == "+" else value - b
            result += 1 if i == slip_at else 0
            out += f" {value} {'plus' if op == '+' else 'minus'} {b} is {result}."
            value = result
        if self.fail_every and j % self.fail_every == 1:
            value += 1
        return out + f" </think> <answer> {value} </answer>"

    def generate(self, prompt_ids, prompt_mask, params, *, n=1, seed=None):
        self.calls += 1
        rng = random.Random(seed)
        rows = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(prompt_ids.tolist(), prompt_mask.tolist())]
        texts = [self._continue(self.tokenizer.decode(row, skip_special_tokens=False), j, rng)
                 for row in rows for j in range(n)]
        b = len(texts)
        zeros = torch.zeros(b, 1)
        return Rollout(prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0), zeros.long(),
                       zeros.long(), zeros, torch.zeros(b, dtype=torch.bool), texts=texts)


def _records(n=12):
    return [r for r in arith_records(4 * n) if r["difficulty"] >= 2][:n]


def _tok(tokenizer):
    return Tokenized(tokenizer, "chat", 128, 128, "")


def test_step_prefixes_end_with_each_step():
    completion = "<think> 3 plus 4 is 7. 7 minus 2 is 5. </think> <answer> 5 </answer>"
    assert step_prefixes(completion, "sentence") == ["<think> 3 plus 4 is 7.", "<think> 3 plus 4 is 7. 7 minus 2 is 5."]
    assert step_prefixes("<answer> 5 </answer>", "sentence") == []  # no steps, nothing to continue


def test_honest_continuations_give_the_rule_verifiers_labels(tokenizer):
    rng = random.Random(0)
    records, completions, truth = [], [], []
    for record in _records():
        slip = arithmetic_slip(record, rng)
        for completion in (record["response"], compose_solution(*slip)):
            chain = reference_chain(record["prompt"])
            records.append(record)
            completions.append(completion)
            truth.append([float(j < len(chain) and parse_equation(completion[a:b]) == chain[j])
                          for j, (a, b) in enumerate(split_steps(completion))])
    engine = ScriptedCompleter(tokenizer)
    success = monte_carlo_labels(engine, _tok(tokenizer), records, completions, MonteCarloConfig(continuations=3))
    assert engine.calls == 1  # every prefix of the batch in one generation call
    assert success == truth
    assert any(0.0 in t and t[0] == 1.0 for t in truth)  # slips after a right step: labelled right, then wrong
    assert all(len(s) == len(split_steps(c)) for s, c in zip(success, completions))


def test_hard_and_soft_estimates(tokenizer):
    records = _records(4)
    engine = ScriptedCompleter(tokenizer, fail_every=2)  # continuations 1, 3, … end wrong
    success = monte_carlo_labels(engine, _tok(tokenizer), records, [r["response"] for r in records],
                                 MonteCarloConfig(continuations=4))
    assert {s for row in success for s in row} == {0.5}  # a right prefix: half its continuations right
    assert estimate_labels([0.5, 0.0, 0.25], "hard") == [1.0, 0.0, 1.0]  # HE: any continuation right
    assert estimate_labels([0.5, 0.0, 0.25], "soft") == [0.5, 0.0, 0.25]  # SE: the share


def test_summary_counts_agreement_with_the_rule_verifier():
    rows = [{"labels": [1.0, 0.0], "rule_labels": [1.0, 0.0], "correct": False},
            {"labels": [1.0, 1.0], "rule_labels": [1.0, 0.0], "correct": True},  # a wrong step called right
            {"labels": [0.0], "rule_labels": [1.0], "correct": False},  # a right step called wrong
            {"labels": [1.0], "rule_labels": None, "correct": True}]  # no rule: not checked
    s = summarize(rows, prompts=3, config=MonteCarloConfig(continuations=4))
    assert s["rule_checked_steps"] == 5 and s["rule_agreement"] == pytest.approx(3 / 5)
    assert s["false_right"] == pytest.approx(1 / 2) and s["false_wrong"] == pytest.approx(1 / 3)
    assert s["steps"] == 6 and s["continuations"] == 24 and s["mean_label"] == pytest.approx(4 / 6)


def _files(folder):
    return {name: (folder / name).read_text() for name in ("data.jsonl", "stats.json")}


def test_the_job_writes_resumable_labelled_rows_the_prm_source_reads(tokenizer, tmp_path):
    records = _records(10)
    config = MonteCarloConfig(solutions=2, continuations=2, batch_size=4, seed=3)
    full = run_mc_step_labels(ScriptedCompleter(tokenizer, slip_every=2), records, tmp_path / "full", config=config)
    o = full["overall"]
    assert o["prompts"] == 10 and o["rows"] == 20 and o["rule_agreement"] == 1.0  # honest completer: exact labels
    assert 0.0 < o["mean_label"] < 1.0 and 0.0 < o["solutions_correct"] < 1.0  # slipped and right solutions
    assert o["continuations"] == 2 * o["steps"]

    class Killed(Exception):
        pass

    def kill(b):
        if b == 1:
            raise Killed

    with pytest.raises(Killed):
        run_mc_step_labels(ScriptedCompleter(tokenizer, slip_every=2), records, tmp_path / "cut", config=config,
                           on_batch_end=kill)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    engine = ScriptedCompleter(tokenizer, slip_every=2)
    run_mc_step_labels(engine, records, tmp_path / "cut", config=config)
    assert engine.calls == 2  # only the last batch (4 + 4 + 2 prompts): its solutions, then its prefixes
    assert _files(tmp_path / "cut") == _files(tmp_path / "full")
    with pytest.raises(JobError, match="other settings"):
        run_mc_step_labels(engine, records, tmp_path / "full", config=MonteCarloConfig(continuations=3))

    rows = FileSource(train=str(tmp_path / "full" / "data.jsonl")).load("train", ("prompt", "completion", "labels"))
    written = [json.loads(line) for line in (tmp_path / "full" / "data.jsonl").read_text().splitlines()]
    assert [r["labels"] for r in rows] == [w["labels"] for w in written] and rows[0]["completion"]


def test_bad_settings_and_rows_fail_naming_the_key(tmp_path):
    with pytest.raises(JobError, match="job.continuations"):
        MonteCarloConfig(continuations=0)
    with pytest.raises(JobError, match="job.estimate"):
        MonteCarloConfig(estimate="median")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "What is 1 + 2?", "completion": "x", "labels": [1, 2]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'labels' must be a list of step labels in \[0, 1\]"):
        FileSource(train=str(bad)).load("train", ("prompt", "completion", "labels"))


def test_the_prm_stage_trains_on_monte_carlo_labels_and_is_scored_on_the_rule_labels(make_cfg, tmp_path,
                                                                                     tokenizer):
    """stage=prm data=mc_step_labels: train rows from the job's file, val/test the rule verifier's."""
    from r1lab.train import build, run

    labels = tmp_path / "labels"
    run_mc_step_labels(ScriptedCompleter(tokenizer, slip_every=2), _records(96), labels,
                       config=MonteCarloConfig(solutions=2, continuations=2, batch_size=48))
    n_rows = len((labels / "data.jsonl").read_text().splitlines())
    overrides = ["stage=prm", "data=mc_step_labels", f"data.source.train.train={labels}/data.jsonl",
                 "data.source.eval.tasks.sizes={train:0,val:16,test:16}", "data.batch_size=16",
                 "backbone=tiny", "backbone.name_or_path=null", "module.optimizer.lr=3e-3", "trainer.max_steps=60",
                 "trainer.val_check_interval=20", "callbacks.progress_bar=null"]
    datamodule = build(make_cfg(*overrides, data=[]), "data")
    assert len(datamodule.load_split("train")) == n_rows > 100
    test_rows = datamodule.load_split("test")  # the rule verifier's exact labels of references and slips
    assert all(len(r["labels"]) >= 2 for r in test_rows) and {x for r in test_rows for x in r["labels"]} == {0.0, 1.0}
    metrics = run(make_cfg(*overrides, data=[]))
    assert metrics["train/loss"] < 0.6  # from ln 2 = 0.69 at the start
    assert 0.0 <= metrics["test/step_accuracy"] <= 1.0 and "test/all_steps_accuracy" in metrics
