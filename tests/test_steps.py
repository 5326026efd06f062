"""Process supervision's inputs: steps split out of completions, their token spans, the rule verifier."""

import pytest

from conftest import arith_records
from r1lab.rewards.steps import (
    StepsNotApplicable,
    arithmetic_step_labels,
    chain_correct,
    parse_equation,
    reference_chain,
    split_steps,
    token_spans,
)

RIGHT = "<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>"
PROMPT = "What is 12 + 7 - 5?"


def texts(completion, rule="sentence"):
    return [completion[a:b] for a, b in split_steps(completion, rule)]


def test_sentence_line_and_regex_rules_on_hand_written_completions():
    assert split_steps(RIGHT) == [(8, 24), (25, 42)]
    assert texts(RIGHT) == ["12 plus 7 is 19.", "19 minus 5 is 14."]
    assert texts("<think> 12加7得19。19减5得14。 </think> <answer> 14 </answer>") == ["12加7得19。", "19减5得14。"]
    assert texts("<think> 1.5 plus 2 is 3.5. Done! </think>") == ["1.5 plus 2 is 3.5.", "Done!"]  # "1.5" stays whole
    lines = "<think>\n12 plus 7 is 19. 19 minus 5\n\n  is 14.\n</think>"
    assert texts(lines, "line") == ["12 plus 7 is 19. 19 minus 5", "is 14."]
    assert texts(RIGHT, r"\d+ \w+ \d+") == ["12 plus 7", "19 minus 5"]  # a regex: its matches are the steps
    with pytest.raises(ValueError, match="valid regex"):
        split_steps(RIGHT, "([")


def test_no_steps_and_a_completion_truncated_mid_step():
    assert split_steps("") == []
    assert split_steps("<think> </think> <answer> 14 </answer>") == []
    assert split_steps("<answer> 14 </answer>") == []  # no chain of thought at all
    cut = "<think> 12 plus 7 is 19. 19 minus"  # no </think>: the last step is unfinished
    assert texts(cut) == ["12 plus 7 is 19.", "19 minus"]
    assert arithmetic_step_labels(PROMPT, cut, {"task": "arith"}) == [1.0, 0.0]


def test_token_spans_cover_exactly_each_step(tokenizer):
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False)

    for completion in (RIGHT, "<think> 12加7得19。19减5得14。 </think> <answer> 14 </answer>",
                       "<think> 12 plus 7 is 19. 19 minus"):
        ids = tokenizer(completion, add_special_tokens=False).input_ids
        assert decode(ids) == completion
        spans = split_steps(completion)
        tokens = token_spans(spans, ids, decode)
        assert len(tokens) == len(spans)
        for (a, b), (first, last) in zip(spans, tokens):
            before, through = len(decode(ids[:first])), len(decode(ids[: last + 1]))
            assert before <= a < len(decode(ids[: first + 1]))  # the first token holds the first character
            assert len(decode(ids[:last])) < b <= through  # the last token holds the last character
    ids = tokenizer(RIGHT, add_special_tokens=False).input_ids
    # "<think>", " ", "1", "2", " plus", " ", "7", " is", " ", "1", "9", "." | " ", "1", "9", " minus", ...
    assert token_spans(split_steps(RIGHT), ids, decode) == [(2, 11), (13, 22)]
    assert token_spans([], [], decode) == []


def test_rule_verifier_labels_wrong_steps_wrong_and_right_steps_right():
    ref = {"task": "arith"}
    assert reference_chain(PROMPT) == [(12, "+", 7, 19), (19, "-", 5, 14)]
    assert arithmetic_step_labels(PROMPT, RIGHT, ref) == [1.0, 1.0]
    # a false equation, then a true one that continues from the wrong value (off the chain): both wrong
    assert arithmetic_step_labels(PROMPT, "<think> 12 plus 7 is 18. 18 minus 5 is 13. </think>", ref) == [0.0, 0.0]
    # a right first step, a wrong second one, a step beyond the chain, a sentence that is no equation
    wrong = "<think> 12 plus 7 is 19. 19 minus 5 is 15. 15 plus 1 is 16. Easy. </think>"
    assert arithmetic_step_labels(PROMPT, wrong, ref) == [1.0, 0.0, 0.0, 0.0]
    assert arithmetic_step_labels(PROMPT, "<think> 12加7得19。19减5得14。</think>", ref) == [1.0, 1.0]
    assert arithmetic_step_labels(PROMPT, "<think> 12 + 7 = 19. 19 - 5 = 14. </think>", ref) == [1.0, 1.0]
    assert parse_equation("19 minus 5 is 14.") == (19, "-", 5, 14) and parse_equation("19 minus 5") is None
    with pytest.raises(StepsNotApplicable, match="code"):
        arithmetic_step_labels("Write f(x)", "<think> return x </think>", {"task": "code"})


def test_every_tiny_world_reference_solution_is_all_right():
    records = arith_records(200)
    for record in records:
        labels = arithmetic_step_labels(record["prompt"], record["response"], record)
        assert labels == [1.0] * record["difficulty"], record


def test_a_chain_is_fully_correct_only_with_every_step_of_the_prompts_chain_right():
    arith = {"task": "arith"}
    assert chain_correct(PROMPT, RIGHT, arith) == 1.0
    assert chain_correct(PROMPT, "<think> 12加7得19。19减5得14。</think> <answer> 14 </answer>", arith) == 1.0
    assert chain_correct(PROMPT, "<think> 12 plus 7 is 19. </think> <answer> 14 </answer>", arith) == 0.0  # stops early
    assert chain_correct(PROMPT, "<think> 12 plus 7 is 19. 19 minus 5 is 15. </think>", arith) == 0.0
    extra = RIGHT.replace(". </think>", ". 14 plus 0 is 14. </think>")  # a step too many
    assert chain_correct(PROMPT, extra, arith) == 0.0
    assert chain_correct(PROMPT, "<answer> 14 </answer>", arith) == 0.0  # no chain of thought at all
    # only where the rule verifier applies: code, math word problems, a prompt with no chain
    assert chain_correct("Write f(x)", "<think> return x </think>", {"task": "code"}) is None
    assert chain_correct(PROMPT, RIGHT, {"task": "math"}) is None and chain_correct(PROMPT, RIGHT, {}) is None
    assert chain_correct("What is two?", RIGHT, arith) is None
    assert all(chain_correct(r["prompt"], r["response"], r) == 1.0 for r in arith_records(50))
