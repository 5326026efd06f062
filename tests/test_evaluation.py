"""Evaluation's held-out metrics: the share of fully correct chains of thought, only where it applies."""

import math
from types import SimpleNamespace

import pytest
import torch

from r1lab.evaluation import EvalConfig, evaluate_batch, score_completions
from test_grpo import _module

RIGHT = "<think> 3 plus 4 is 7. 7 minus 2 is 5. </think> <answer> 5 </answer>"
SHORT = "<think> 3 + 4 - 2 = 5 </think> <answer> 5 </answer>"  # the right answer, no steps
RECORDS = [{"prompt": "What is 3 + 4 - 2?", "answer": "5", "task": "arith"},
           {"prompt": "Write f(x) returning x.", "answer": None, "task": "code", "tests": []},
           {"prompt": "What is 3 + 4 - 2?", "answer": "5", "task": "arith"}]


class FixedEngine:
    """An engine that answers every prompt with the next of a list of texts."""

    def __init__(self, model, texts):
        self.model, self.texts = model, texts

    def generate(self, prompt_ids, prompt_mask, params, *, n=1, seed=None):
        texts = self.texts[: prompt_ids.shape[0]]
        return SimpleNamespace(texts=texts, lengths=torch.full((len(texts),), 9), truncated=torch.zeros(len(texts)))


def _batch(records):
    return {"records": records, "prompt_ids": torch.ones(len(records), 3, dtype=torch.long),
            "prompt_mask": torch.ones(len(records), 3, dtype=torch.long)}


def test_chain_correct_is_scored_on_arithmetic_records_only():
    scores = score_completions([r["prompt"] for r in RECORDS], [RIGHT, "<think> x </think>", SHORT], RECORDS)
    assert scores["chain_correct"][0] == 1.0 and math.isnan(scores["chain_correct"][1])
    assert scores["chain_correct"][2] == 0.0 and scores["accuracy"][2] == 1.0  # right answer, no right chain
    assert "chain_correct" not in score_completions(["p"], [RIGHT], [{"prompt": "p", "answer": "5", "task": "math"}])


def test_the_test_metric_averages_over_arithmetic_prompts_and_rows_leave_it_out_elsewhere(tiny_backbone):
    module = _module(tiny_backbone)
    module.configure_model()
    module._engine = FixedEngine(module.policy, [RIGHT, "<think> x </think>", SHORT])
    out, _ = evaluate_batch(module._engine, _batch(RECORDS), EvalConfig(k=0))
    assert out["accuracy"].tolist() == [1.0, 0.0, 1.0]
    module._eval_step(_batch(RECORDS), "test")
    module._engine.texts = [RIGHT]
    module._eval_step(_batch(RECORDS[:1]), "test")
    # 2 of the 3 arithmetic prompts have the whole right chain; the code prompt is in no mean
    assert module.eval_metrics["test_chain_correct"].compute().item() == pytest.approx(2 / 3)
    assert module.eval_metrics["test_accuracy"].compute().item() == pytest.approx(3 / 4)
    assert [row.get("chain_correct") for row in module.test_rows] == [1.0, None, 0.0, 1.0]
