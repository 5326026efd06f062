"""reasoning-gym as a data source and its verifier as a reward."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("reasoning_gym", reason="needs the `real` extra: pip install -e .[real]")

from r1lab.data.reasoning_gym import ReasoningGym  # noqa: E402
from r1lab.rewards.reasoning_gym import reasoning_gym_accuracy, reasoning_gym_reward  # noqa: E402

TASKS = {"chain_sum": 1.0, "basic_arithmetic": 1.0}
CONFIG = {"chain_sum": {"min_terms": 2, "max_terms": 3, "max_digits": 2},
          "basic_arithmetic": {"max_terms": 2, "max_digits": 2, "allow_parentheses": False}}
SIZES = {"train": 200, "val": 20, "test": 40}


def source(seed=0, sizes=SIZES, **kwargs):
    return ReasoningGym(tasks=TASKS, config=CONFIG, seed=seed, sizes=sizes, **kwargs)


def splits(src):
    return {split: src.load(split) for split in ("train", "val", "test")}


def test_splits_are_disjoint_sized_and_well_formed():
    records = splits(source())
    assert {s: len(r) for s, r in records.items()} == SIZES
    questions = {s: {r["prompt"] for r in rs} for s, rs in records.items()}
    assert all(len(q) == SIZES[s] for s, q in questions.items())  # no repeats inside a split either
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    for rs in records.values():
        for r in rs:
            assert isinstance(r["answer"], str) and r["prompt"] and r["language"] == "en"
            assert r["task"] in TASKS and r["reasoning_gym"]["dataset"] == r["task"]
            assert json.loads(json.dumps(r)) == r  # plain JSON, as data files store it
            assert len(json.dumps(r)) < 2000
    assert {r["task"] for r in records["train"]} == set(TASKS)
    assert [r["id"] for r in records["test"][:2]] == ["test-0", "test-1"]


def test_seeded():
    first, again, other = splits(source(0)), splits(source(0)), splits(source(1))
    assert first == again
    for split in first:
        assert [r["prompt"] for r in first[split]] != [r["prompt"] for r in other[split]]


def test_growing_train_keeps_val_and_test():
    small, large = splits(source()), splits(source(sizes={**SIZES, "train": 400}))
    assert small["test"] == large["test"] and small["val"] == large["val"]


def test_hydra_containers_are_accepted():
    from omegaconf import OmegaConf

    src = ReasoningGym(tasks=OmegaConf.create(TASKS), config=OmegaConf.create(CONFIG), sizes=OmegaConf.create(SIZES))
    assert splits(src) == splits(source())


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="not a reasoning-gym data set"):
        ReasoningGym(tasks={"no_such_task": 1.0})
    with pytest.raises(ValueError, match="set by the source"):
        ReasoningGym(tasks={"chain_sum": 1.0}, config={"chain_sum": {"seed": 3}})
    with pytest.raises(ValueError, match="data.source.config: 'chain_summ' is not"):
        ReasoningGym(tasks={"chain_sum": 1.0}, config={"chain_summ": {}})
    with pytest.raises(ValueError, match="refused the config"):
        ReasoningGym(tasks={"chain_sum": 1.0}, config={"chain_sum": {"max_terms": 1, "min_terms": 3}},
                     sizes={"test": 1}).load("test")
    with pytest.raises(ValueError, match="cannot generate"):  # reasoning-gym finds this one only while generating
        ReasoningGym(tasks={"simple_equations": 1.0}, config={"simple_equations": {"operators": ["+", "-"]}},
                     sizes={"test": 1}).load("test")
    with pytest.raises(ValueError, match="cannot draw"):  # 1-digit a + b or a - b: 200 questions at most
        ReasoningGym(tasks={"chain_sum": 1.0}, config={"chain_sum": {"max_terms": 2, "max_digits": 1}},
                     sizes={"test": 300}).load("test")


def test_config_of_unselected_tasks_is_ignored():
    src = ReasoningGym(tasks={"chain_sum": 1.0}, config={**CONFIG, "products": {"max_digits": 1}})
    assert src.config == {"chain_sum": CONFIG["chain_sum"]}


def test_data_config_composes(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("data=reasoning_gym", "data.source.sizes={train:16,val:4,test:4}", data=[])
    default = instantiate(cfg.data)
    assert default.template == "chat" and default.system_prompt is None
    assert {r["task"] for r in default.source.load("train")} == {"chain_sum", "basic_arithmetic"}
    cfg = make_cfg("data=reasoning_gym", "data.source.sizes={train:16,val:4,test:4}",
                   "data.source.tasks={products:1.0,simple_equations:1.0}", "data.source.config.products.max_digits=2",
                   data=[])
    data = instantiate(cfg.data)
    assert set(data.source.config) == {"products", "simple_equations"}
    assert data.source.config["products"]["max_digits"] == 2
    assert {r["task"] for r in data.source.load("train")} == {"products", "simple_equations"}


# --- the reward ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records():
    return source().load("test")


def test_right_answer_in_tags_scores_one(records):
    for r in records:
        completion = f"<think> working it out </think> <answer> {r['answer']} </answer>"
        assert reasoning_gym_reward(r["prompt"], completion, r) == 1.0
        assert reasoning_gym_accuracy(r["prompt"], completion, r) == 1.0


def test_wrong_or_missing_answer_scores_zero(records):
    for r in records:
        wrong = str(int(r["answer"]) + 1)  # never holds the reference (which would earn partial credit)
        assert reasoning_gym_reward(r["prompt"], f"<think> x </think> <answer>{wrong}</answer>", r) == 0.0
        assert reasoning_gym_reward(r["prompt"], f"The answer is {r['answer']}.", r) == 0.0  # no tags
        assert reasoning_gym_reward(r["prompt"], "<think> x </think> <answer></answer>", r) == 0.0


def test_partial_credit_is_reasoning_gyms_and_accuracy_is_binary():
    r = next(r for r in source().load("train") if r["answer"].isdigit() and len(r["answer"]) >= 2)
    completion = f"<answer>-{r['answer']}</answer>"  # contains the reference: partial credit
    assert 0.0 < reasoning_gym_reward("", completion, r) < 1.0
    assert reasoning_gym_accuracy("", completion, r) == 0.0


def test_scored_from_saved_or_stripped_records(records):
    r = records[0]
    saved = json.loads(json.dumps(r))
    stripped = {k: v for k, v in r.items() if k != "reasoning_gym"}  # as rejection sampling writes rows
    for ref in (saved, stripped):
        assert reasoning_gym_reward("", f"<answer>{r['answer']}</answer>", ref) == 1.0


@pytest.mark.parametrize("completion", [
    None, 17, b"<answer>1</answer>", "", "<answer>", "<answer>\x00\ud800</answer>",
    "<answer>" + "9" * 100_000 + "</answer>",
    "<answer>1e999999999</answer>", "<answer>NaN</answer>", "<answer>inf</answer>", "\\boxed{", "<answer>[[[</answer>",
])
def test_never_raises_on_garbage(records, completion):
    value = reasoning_gym_reward("", completion, records[0])
    assert 0.0 <= value <= 1.0 and reasoning_gym_accuracy("", completion, records[0]) in (0.0, 1.0)
    for ref in ({}, {"task": "no_such_task", "answer": "1"}, {"answer": None},
                {"task": "chain_sum", "reasoning_gym": {"dataset": "chain_sum", "config": {"bogus": 1}}},
                {"task": "chain_sum", "reasoning_gym": "not a dict"}):
        assert reasoning_gym_reward("", completion, ref) == 0.0
        assert reasoning_gym_accuracy("", completion, ref) == 0.0


def test_other_tasks_use_their_own_verifier():
    src = ReasoningGym(tasks={"spell_backward": 1.0, "family_relationships": 1.0}, sizes={"test": 10})
    for r in src.load("test"):
        assert reasoning_gym_accuracy("", f"<answer>{r['answer']}</answer>", r) == 1.0
        assert reasoning_gym_accuracy("", "<answer>zzzz</answer>", r) == 0.0
