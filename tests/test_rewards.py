"""Rule rewards (R1, arXiv 2501.12948 §2.2.2, §2.3.2): hand-checked values, garbage, threads, configs."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from r1lab.rewards import REWARDS, RewardSet
from r1lab.rewards.accuracy import (
    accuracy_reward,
    accuracy_reward_math,
    extract_answer,
    math_verify_match,
    numeric_match,
)
from r1lab.rewards.format import extract_think, format_reward_lenient, format_reward_strict, has_format
from r1lab.rewards.language import language_consistency, language_consistency_reward, words_by_language

GOOD = "<think> 12 plus 7 is 19. </think> <answer> 19 </answer>"


# --- format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "strict", "lenient"),
    [
        (GOOD, 1.0, 1.0),
        ("\n  <think>\nx\n</think>\n\n<answer>\n19\n</answer>\n\n", 1.0, 1.0),  # whitespace is fine
        ("<think>x</think><answer>19</answer>", 1.0, 1.0),
        ("Sure! " + GOOD, 0.0, 1.0),  # text before
        (GOOD + " Hope this helps.", 0.0, 1.0),  # text after
        ("<think> x </think> so <answer> 19 </answer>", 0.0, 1.0),  # text between
        ("<think>  </think> <answer> 19 </answer>", 0.0, 1.0),  # empty thought
        ("<think> x </think> <answer> </answer>", 0.0, 1.0),  # empty answer
        (GOOD + " <answer> 20 </answer>", 0.0, 1.0),  # two answers
        ("<answer> 19 </answer> <think> x </think>", 0.0, 0.0),  # wrong order
        ("<think> x </think> 19", 0.0, 0.0),  # no answer
        ("<think> x <answer> 19 </answer>", 0.0, 0.0),  # unclosed think
        ("", 0.0, 0.0),
    ],
)
def test_format_rewards(completion, strict, lenient):
    assert format_reward_strict("", completion, {}) == strict
    assert format_reward_lenient("", completion, {}) == lenient
    assert has_format(completion) is bool(strict)
    assert has_format(completion, strict=False) is bool(lenient)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (GOOD, "19"),
        ("<answer> 1 </answer> then <answer>\n 2 \n</answer>", "2"),  # the LAST answer block
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{1} and finally \\boxed{ 3 }", "3"),
        ("<answer> 7 </answer> \\boxed{8}", "7"),  # the answer tag wins over a box
        ("\\boxed{\\frac{1}{2}", None),  # cut off inside the box
        ("no answer here", None),
    ],
)
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_extract_think():
    assert extract_think("<think> a </think> <think> b </think> <answer> c </answer>") == " a \n b "
    assert extract_think("<think> cut off") == " cut off"
    assert extract_think("no tags") == "no tags"


# --- accuracy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "ref", "match"),
    [
        ("19", "19", True),
        (" 19. ", "19", True),
        ("19.0", "19", True),
        ("+19", "19", True),
        ("1,000", "1000", True),
        ("1,234,567.5", "1234567.5", True),
        ("-3", "-3", True),
        ("0.1", "0.10", True),  # exact decimals, no float rounding
        ("2e3", "2000", True),
        ("20", "19", False),
        ("-19", "19", False),
        ("1,00", "100", False),  # not a thousands separator
        ("19 apples", "19", False),
        ("nan", "nan", False),
        ("inf", "inf", False),
        ("1e999999999", "1", False),  # refused, not computed
        ("", "19", False),
        (None, "19", False),
    ],
)
def test_numeric_match(pred, ref, match):
    assert numeric_match(pred, ref) is match


@pytest.mark.parametrize(
    ("pred", "ref", "match"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\frac12", True),
        ("2^{1/2}", "\\sqrt{2}", True),
        ("2\\pi", "2\\pi", True),  # bare LaTeX is parsed as LaTeX, not as the number 2
        ("$x^2+2x+1$", "(x+1)^2", True),
        ("2", "2\\pi", False),
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("}{garbage\\", "\\frac{1}{2}", False),
        ("", "1", False),
        (None, "1", False),
    ],
)
def test_math_verify_match(pred, ref, match):
    assert math_verify_match(pred, ref) is match


def test_math_verify_works_outside_the_main_thread():
    # math_verify's default SIGALRM timeout raises ValueError outside the main thread
    results = []
    worker = threading.Thread(target=lambda: results.append(math_verify_match("0.5", "\\frac{1}{2}")))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize("pred", ["9^{9^{9^{9}}}", "9^{99999999}", "(x+1)^{1000}", "99999999!"])
def test_math_verify_refuses_answers_that_would_hang(pred):
    start = time.monotonic()
    assert math_verify_match(pred, "3") is False
    assert time.monotonic() - start < 2.0  # unguarded, these take from 5 s to forever


def test_accuracy_reward_arith_and_math():
    arith = {"task": "arith", "answer": "19"}
    assert accuracy_reward("", GOOD, arith) == 1.0
    assert accuracy_reward("", "<answer> 19. </answer>", arith) == 1.0
    assert accuracy_reward("", "<think> x </think> <answer> 20 </answer>", arith) == 0.0
    assert accuracy_reward("", "<think> 19 </think>", arith) == 0.0  # no final answer
    assert accuracy_reward("", "the answer is \\boxed{19}", {"answer": "19"}) == 1.0  # default task
    # a reference that is not a plain number falls back to math-verify ...
    assert accuracy_reward("", "<answer> 0.5 </answer>", {"task": "math", "answer": "\\frac{1}{2}"}) == 1.0
    # ... a plain-number reference is decided by exact numeric equality alone
    assert accuracy_reward("", "<answer> 1/2 </answer>", {"task": "math", "answer": "0.5"}) == 0.0
    assert accuracy_reward_math("", "<answer> 1/2 </answer>", {"answer": "0.5"}) == 1.0
    assert accuracy_reward_math("", "<answer> 1/3 </answer>", {"answer": "0.5"}) == 0.0


def test_accuracy_reward_delegates_code_tasks_to_the_sandbox():
    reference = {"task": "code", "answer": "def f(x): return x+1", "tests": [[[1], 2], [[2], 3]]}
    assert accuracy_reward("", "<answer> def f(x): return x+1 </answer>", reference) == 1.0
    assert accuracy_reward("", "<answer> def f(x): return 2 </answer>", reference) == 0.5


# --- language consistency -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "counts", "en", "zh"),
    [
        ("12 plus 7 is 19. 19减5得14。", {"en": 2, "zh": 2}, 0.5, 0.5),  # {plus, is} vs {减, 得}
        ("We add 3 and 4 得到 7", {"en": 3, "zh": 2}, 0.6, 0.4),  # {We, add, and} vs {得, 到}
        ("乘 3 然后 加 1", {"zh": 4}, 0.0, 1.0),
        ("multiply x by 3 then add 1", {"en": 5}, 1.0, 0.0),
        ("don't stop", {"en": 3}, 1.0, 0.0),  # don, t, stop: runs of letters
        ("café au lait 咖啡", {"en": 3, "zh": 2}, 0.6, 0.4),  # accented letters are Latin
        ("<think> 3 + 4 = 7 </think>", {}, 1.0, 1.0),  # no words at all: nothing to penalise
        ("", {}, 1.0, 1.0),
    ],
)
def test_language_consistency(text, counts, en, zh):
    assert dict(words_by_language(text)) == counts
    assert language_consistency(text, "en") == pytest.approx(en)
    assert language_consistency(text, "zh") == pytest.approx(zh)


def test_language_table_is_extensible_and_checked():
    assert language_consistency("привет мир hello", "ru") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="klingon"):
        language_consistency("text", "klingon")


def test_language_consistency_reward_reads_the_chain_of_thought_only():
    mixed = "<think> 12 plus 7 is 19. 19减5得14。 </think> <answer> 14 </answer>"
    assert language_consistency_reward("", mixed, {}) == 0.5  # default target "en"
    zh_thought = "<think> 加 3 </think> <answer> seven </answer>"
    assert language_consistency_reward("", zh_thought, {"language": "zh"}) == 1.0  # answer ignored
    assert language_consistency_reward("", "The answer 是 14", {"language": "en"}) == pytest.approx(2 / 3)


# --- never raise on garbage ---------------------------------------------------------------------

PIECES = [
    "<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "$", "\\frac", "12", "-",
    "1/2", ".", ",", " ", "\n", "减", "得", "abc", "x^", "```python\n", "```", "\\", "\x00", "é", "NaN",
]  # fmt: skip


def test_rewards_never_raise_on_garbage():
    rng = random.Random(0)
    fns = [REWARDS[name] for name in ("accuracy", "accuracy_math", "format", "format_lenient", "language")]
    for _ in range(60):
        completion = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25)))
        for fn in fns:
            value = fn("prompt", completion, {"task": "arith", "answer": "12"})
            assert isinstance(value, float)
            assert 0.0 <= value <= 1.0


# --- composition --------------------------------------------------------------------------------


def half(prompt, completion, reference):
    return 0.5


def test_reward_set_weighted_sum():
    rewards = RewardSet(
        functions={
            "accuracy": "accuracy",
            "format": "r1lab.rewards.format.format_reward_strict",
            "const": half,
        },
        weights={"accuracy": 1.0, "format": 0.5, "const": 2.0},
    )
    completions = [GOOD, "the answer is \\boxed{19}", "<think> x </think> <answer> 20 </answer>"]
    total, parts = rewards.score(["p"] * 3, completions, [{"task": "arith", "answer": "19"}] * 3)
    assert torch.equal(parts["accuracy"], torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(parts["format"], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(parts["const"], torch.tensor([0.5, 0.5, 0.5]))
    # 1·acc + 0.5·format + 2·0.5
    assert torch.equal(total, torch.tensor([2.5, 2.0, 1.5]))
    assert total.shape == (3,) and total.dtype == torch.float32


def test_reward_set_from_hydra_config_and_registry():
    assert set(REWARDS) == {"accuracy", "accuracy_math", "format", "format_lenient", "language", "code",
                            "reasoning_gym", "reasoning_gym_score"}
    cfg = OmegaConf.create({"functions": {"acc": "accuracy", "lang": "language"}, "weights": {"lang": 0.1}})
    rewards = RewardSet(cfg.functions, cfg.weights)
    assert [(f.name, f.weight) for f in rewards.functions] == [("acc", 1.0), ("lang", 0.1)]
    mixed = "<think> 12 plus 7 is 19. 19减5得14。 </think> <answer> 14 </answer>"
    total, parts = rewards.score(["p"], [mixed], [{"answer": "14"}])
    assert parts["lang"].tolist() == [0.5]
    assert total.tolist() == [pytest.approx(1.05)]


@pytest.mark.parametrize(
    ("functions", "weights", "message"),
    [
        ({"foo": "no_such_reward"}, {}, "module.rewards.functions.foo: unknown reward"),
        ({"foo": "r1lab.rewards.nowhere.fn"}, {}, "module.rewards.functions.foo: cannot import"),
        ({"foo": "r1lab.rewards.format.nothing"}, {}, "module.rewards.functions.foo: cannot import"),
        ({"foo": "r1lab.rewards.code.ALL_OR_NOTHING"}, {}, "module.rewards.functions.foo: .* is not callable"),
        ({"foo": 3}, {}, "module.rewards.functions.foo: expected"),
        ({"foo": "format"}, {"bar": 1.0}, "module.rewards.weights.bar"),
        ({"foo": "format"}, {"foo": "heavy"}, "module.rewards.weights.foo: not a number"),
        ({}, {}, "at least one"),
    ],
)
def test_reward_set_rejects_bad_config(functions, weights, message):
    with pytest.raises(ValueError, match=message):
        RewardSet(functions, weights)


def test_reward_set_scores_code_tasks_on_threads():
    caller = threading.current_thread()
    seen = {}

    def slow(prompt, completion, reference):
        seen[completion] = threading.current_thread() is caller
        time.sleep(0.2 if reference["task"] == "code" else 0.0)
        return 1.0

    rewards = RewardSet({"slow": slow}, max_workers=4)
    completions = [f"c{i}" for i in range(10)]
    references = [{"task": "code"}] * 8 + [{"task": "arith"}] * 2
    start = time.monotonic()
    total, _ = rewards.score([""] * 10, completions, references)
    elapsed = time.monotonic() - start
    assert total.tolist() == [1.0] * 10
    assert elapsed < 1.0  # 8 × 0.2 s = 1.6 s one after another, 0.4 s on 4 threads
    assert [seen[c] for c in completions] == [False] * 8 + [True] * 2  # only code tasks go to threads


def test_reward_set_rejects_ragged_batches():
    with pytest.raises(ValueError, match="2 prompts, 1 completions"):
        RewardSet({"format": "format"}).score(["a", "b"], ["c"], [{}])
