import random
import re

import pytest

from r1lab.data.tinyworld import TinyWorld, generate_arithmetic_task


def _evaluate(expression: str) -> int:
    tokens = expression.split()
    value = int(tokens[0])
    for op, b in zip(tokens[1::2], tokens[2::2]):
        value = value + int(b) if op == "+" else value - int(b)
    return value


def test_solutions_are_correct_and_difficulty_counts_operations():
    rng = random.Random(0)
    for difficulty in (1, 2, 4):
        for _ in range(50):
            task = generate_arithmetic_task(rng, difficulty, max_operand=30)
            expression = task["prompt"].removeprefix("What is ").removesuffix("?")
            assert len(expression.split()) == 2 * difficulty + 1
            assert int(task["answer"]) == _evaluate(expression) >= 0
            steps = re.findall(r"(\d+) (plus|minus) (\d+) is (\d+)", task["response"])
            assert len(steps) == difficulty
            for a, op, b, c in steps:
                assert int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
            assert task["response"].endswith(f"<answer> {task['answer']} </answer>")


def test_chinese_chain_of_thought():
    task = generate_arithmetic_task(random.Random(1), 2, language="zh")
    assert "得" in task["response"] and "plus" not in task["response"]
    assert task["language"] == "en" and task["cot_language"] == "zh"


def test_splits_are_seeded_and_disjoint():
    world = TinyWorld(seed=3, sizes={"train": 300, "val": 40, "test": 60})
    prompts = {s: [r["prompt"] for r in world.load(s)] for s in ("train", "val", "test")}
    assert [len(p) for p in prompts.values()] == [300, 40, 60]
    assert not set(prompts["train"]) & set(prompts["test"])
    assert not set(prompts["train"]) & set(prompts["val"])
    assert not set(prompts["val"]) & set(prompts["test"])
    again = TinyWorld(seed=3, sizes={"train": 300, "val": 40, "test": 60})
    assert [r["prompt"] for r in again.load("test")] == prompts["test"]
    other = TinyWorld(seed=4, sizes={"train": 300, "val": 40, "test": 60})
    assert [r["prompt"] for r in other.load("test")] != prompts["test"]
    # growing the train split leaves val and test alone
    bigger = TinyWorld(seed=3, sizes={"train": 600, "val": 40, "test": 60})
    assert [r["prompt"] for r in bigger.load("test")] == prompts["test"]


def test_base_corpus_is_mostly_prose_with_a_small_tagged_prior():
    world = TinyWorld(seed=0, sizes={"train": 2000, "val": 4, "test": 4}, zh_fraction=0.5, corpus=True)
    docs = [r["response"] for r in world.load("train")]
    dialogues = [d for d in docs if d.startswith("A conversation")]
    tagged = [d for d in dialogues if d.endswith("</answer>")]
    prose = [d for d in docs if not d.startswith("A conversation")]
    assert 0.10 < len(dialogues) / len(docs) < 0.20  # dialogue_share 0.15
    assert 0.01 < len(tagged) / len(docs) < 0.05  # 0.15 * 0.2 = 3% answer in the R1 format
    assert not any("<answer>" in d or "<think>" in d for d in prose)
    assert any("答案是" in d for d in prose) and any("The answer is" in d for d in prose)
    assert all(r["prompt"] == "" for r in world.load("train"))
    assert "<answer>" in world.load("test")[0]["response"]  # evaluation splits stay tasks


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="data.source.difficulty"):
        TinyWorld(difficulty=[3, 1])
    with pytest.raises(ValueError, match="data.source.families"):
        TinyWorld(families={"poetry": 1.0}, sizes={"train": 1, "val": 0, "test": 0}).load("train")
    with pytest.raises(ValueError, match="data.source.solutions: 'terse'"):
        TinyWorld(solutions="terse")


def test_short_solutions_keep_prompts_and_answers_and_drop_the_steps():
    sizes = {"train": 60, "val": 4, "test": 8}
    families = {"arith": 0.8, "code": 0.2}
    full = TinyWorld(seed=2, sizes=sizes, families=families).load("train")
    short = TinyWorld(seed=2, sizes=sizes, families=families, solutions="short").load("train")
    assert [(r["prompt"], r["answer"]) for r in short] == [(r["prompt"], r["answer"]) for r in full]
    for f, s in zip(full, short):
        if f["task"] == "code":
            assert s["response"] == f["response"]  # code solutions are one line already
            continue
        expression = f["prompt"].removeprefix("What is ").removesuffix("?")
        assert s["response"] == f"<think> {expression} = {f['answer']} </think> <answer> {f['answer']} </answer>"
        assert _evaluate(expression) == int(f["answer"])
        assert f["response"].count(" is ") == f["difficulty"] and " is " not in s["response"]
    assert any(r["task"] == "code" for r in short)
    # the base corpus is built from the full solutions either way
    corpus = dict(seed=2, sizes=sizes, families=families, corpus=True)
    assert TinyWorld(**corpus, solutions="short").load("train") == TinyWorld(**corpus).load("train")
