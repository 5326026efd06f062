"""The code sandbox's scoring and its pool, and the tiny world's code tasks (R1, arXiv 2501.12948
§2.2.2: code is scored by test cases). Hostile programs are in test_sandbox_hostile.py, each
kernel layer on its own in test_sandbox_layers.py."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import tempfile
import time

import pytest

from r1lab.data.tinyworld.code_tasks import generate_code_task
from r1lab.rewards import RewardSet, code, sandbox
from r1lab.rewards.code import code_reward, extract_program, run_sandboxed
from r1lab.rewards.language import language_consistency

TESTS = [[[0], 1], [[1], 4], [[2], 7], [[5], 16]]  # f(x) = 3x + 1
REFERENCE = {"task": "code", "tests": TESTS}


def answer(program: str) -> str:
    return f"<think> multiply x by 3 then add 1 </think> <answer> {program} </answer>"


# --- scoring ------------------------------------------------------------------------------------


def test_correct_program_scores_one():
    assert code_reward("", answer("def f(x): return x*3+1"), REFERENCE) == 1.0
    result = run_sandboxed("def f(x): return x*3+1", TESTS)
    assert (result.passed, result.total, result.status) == (4, 4, "ok")


def test_partly_wrong_program_scores_its_share_of_tests(monkeypatch):
    wrong_above_1 = "def f(x):\n    return x*3+1 if x < 2 else 0"
    assert code_reward("", answer(wrong_above_1), REFERENCE) == 0.5
    assert code_reward("", answer("def f(x): return -1"), REFERENCE) == 0.0
    monkeypatch.setattr(code, "ALL_OR_NOTHING", True)
    assert code_reward("", answer(wrong_above_1), REFERENCE) == 0.0


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ("def f(x) return x", "error"),  # syntax error
        ("def g(x): return x*3+1", "error"),  # no function named f
        ("raise SystemExit(0)", "error"),
        ("import os\nos._exit(0)", "crashed"),  # dies before the harness can answer
        ("import numpy\ndef f(x): return x*3+1", "error"),  # only the stdlib allow-list
    ],
)
def test_broken_programs_score_zero(program, status):
    result = run_sandboxed(program, TESTS)
    assert (result.passed, result.status) == (0, status)


def test_entry_point_and_multiple_arguments():
    result = run_sandboxed("def add(a, b): return a + b", [[[1, 2], 3], [[2, 2], 5]], entry="add")
    assert (result.passed, result.total) == (1, 2)
    reference = {"tests": [[[1, 2], 3]], "entry": "add"}
    assert code_reward("", "<answer> def add(a, b): return a + b </answer>", reference) == 1.0


@pytest.mark.parametrize(
    ("completion", "program"),
    [
        (answer("def f(x): return x"), "def f(x): return x"),
        ("<answer>\n```python\ndef f(x):\n    return x\n```\n</answer>", "def f(x):\n    return x"),
        (
            "Here:\n```python\ndef f(x): return 1\n```\nand\n```py\ndef f(x): return 2\n```",
            "def f(x): return 2",
        ),
        ("<answer>\n    def f(x):\n        return x\n</answer>", "def f(x):\n    return x"),  # dedented
        ("<think> no program </think>", None),
        ("<answer>   </answer>", None),
    ],
)
def test_extract_program(completion, program):
    assert extract_program(completion) == program


def test_no_program_or_no_tests_scores_zero():
    assert code_reward("", "<think> hmm </think>", REFERENCE) == 0.0
    assert code_reward("", answer("def f(x): return x*3+1"), {"task": "code"}) == 0.0
    assert code_reward("", answer("def f(x): return x*3+1"), {"tests": "not a list"}) == 0.0


def test_runs_in_a_throwaway_directory_that_is_deleted():
    pattern = os.path.join(tempfile.gettempdir(), "r1lab-sandbox-*")
    before = set(glob.glob(pattern))
    program = "import os\ndef f(x): return os.path.basename(os.getcwd()).startswith('r1lab-sandbox-')"
    assert run_sandboxed(program, [[[0], True]]).passed == 1
    assert set(glob.glob(pattern)) == before


def test_a_program_may_work_in_its_throwaway_directory():
    program = (
        "import os\n"
        "def f(x):\n"
        "    os.makedirs('d', exist_ok=True)\n"
        "    fd = os.open('d/scratch', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
        "    os.write(fd, str(x*3+1).encode())\n"
        "    os.close(fd)\n"
        "    return int(open('d/scratch').read()) if os.listdir('d') == ['scratch'] else None"
    )
    assert run_sandboxed(program, TESTS) == code.SandboxResult(4, 4, "ok", "")


# --- the pool: a fresh process per program, warm zygotes, concurrency ---------------------------


def raw_outputs(program: str, args: list) -> list:
    """What the entry function returned for each argument list, read back from the worker."""
    with tempfile.TemporaryDirectory(prefix="r1lab-sandbox-") as workdir:
        job = code._job(program, args, "f", workdir, cpu_s=2, memory_mb=256)
        job["required"] = list(code.sandbox_guards().layers)
        reply = sandbox.pool.get_pool(list(code.ALLOWED_IMPORTS)).run(job, 2.0, code.MAX_OUTPUT_BYTES)
    record = json.loads(reply["output"].splitlines()[-1])
    return [None if out is None else json.loads(out) for out in record["outputs"]]


def test_no_two_programs_share_process_state():
    """Every program runs in a fresh fork of a zygote that never runs programs itself: what one
    program changes in its interpreter, the next one does not see."""
    spoil = "import json, math, os\nmath.pi = 3\njson.dumps = None\nos.environ['R1LAB'] = '1'\ndef f(x): return 0"
    check = "import json, math, os\ndef f(x): return [math.pi, json.dumps(x), os.environ.get('R1LAB'), os.getpid()]"
    pids = []
    for _ in range(3):
        assert raw_outputs(spoil, [[0]]) == [0]  # the harness kept its own json.dumps
        [(pi, dumped, env, pid)] = raw_outputs(check, [[[1]]])
        assert (pi, dumped, env) == (3.141592653589793, "[1]", None)
        pids.append(pid)
    assert len(set(pids)) == len(pids)  # a new process each time
    assert not set(pids) & sandbox.zygote_pids()


def test_zygotes_that_die_are_replaced():
    assert run_sandboxed("def f(x): return x*3+1", TESTS).passed == 4
    zygotes = sandbox.zygote_pids()
    assert zygotes
    for pid in zygotes:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    for _ in range(3):
        assert run_sandboxed("def f(x): return x*3+1", TESTS).passed == 4
    assert sandbox.zygote_pids() and not sandbox.zygote_pids() & zygotes


def test_scoring_a_batch_is_fast_and_concurrent():
    """The fast path: forks of warm zygotes, one per CPU, fed by RewardSet's threads."""
    program = "def f(x): return x*3+1"
    run_sandboxed(program, TESTS)  # warm
    latencies = []
    for _ in range(10):
        start = time.perf_counter()
        assert run_sandboxed(program, TESTS).passed == 4
        latencies.append(time.perf_counter() - start)
    # a fresh interpreter per program took 66-118 ms; a fork of a zygote takes a few
    assert sorted(latencies)[len(latencies) // 2] < 0.04, latencies
    completions = [answer(program), answer("def f(x): return 0")] * 8
    start = time.perf_counter()
    total, _ = RewardSet({"accuracy": "accuracy"}, max_workers=4).score([""] * 16, completions, [REFERENCE] * 16)
    assert total.tolist() == [1.0, 0.0] * 8
    assert time.perf_counter() - start < 1.0


def test_reward_set_runs_sandboxes_in_parallel_and_in_order():
    completions = [answer("def f(x): return x*3+1"), answer("def f(x): return 0"), "garbage"] * 2
    total, parts = RewardSet({"accuracy": "accuracy"}, max_workers=2).score(
        [""] * 6, completions, [REFERENCE] * 6
    )
    assert total.tolist() == [1.0, 0.0, 0.0] * 2
    assert parts["accuracy"].tolist() == [1.0, 0.0, 0.0] * 2


# --- the tiny world's code tasks ----------------------------------------------------------------


def test_code_tasks_are_deterministic_and_pass_their_own_tests():
    tasks = [generate_code_task(random.Random(7), d, lang) for d in (1, 2, 3) for lang in ("en", "zh")]
    again = [generate_code_task(random.Random(7), d, lang) for d in (1, 2, 3) for lang in ("en", "zh")]
    assert tasks == again
    for task in tasks:
        assert task["task"] == "code" and len(task["tests"]) == 5
        assert task["prompt"].startswith("Write a Python function f(x) that returns x ")
        assert language_consistency(task["prompt"], "en") == 1.0  # the prompt is always English
        assert code_reward(task["prompt"], task["response"], task) == 1.0
        assert task["response"].endswith(f"<answer> {task['answer']} </answer>")


def test_code_task_shape_by_difficulty_and_language():
    rng = random.Random(0)
    for difficulty in (1, 2, 3):
        for language in ("en", "zh"):
            task = generate_code_task(rng, difficulty, language)
            operations = task["answer"].count("+") + task["answer"].count("-") + task["answer"].count("*")
            assert operations == difficulty
            assert (
                len(task["prompt"].split()) == 8 + 2 * difficulty
            )  # "Write ... returns x" and (op, c) per step
            thought = task["response"].split("<think>")[1].split("</think>")[0]
            assert language_consistency(thought, language) == 1.0
            assert task["language"] == language
    with pytest.raises(ValueError, match="difficulty"):
        generate_code_task(rng, 0)


def test_code_task_example_and_tests_by_hand():
    # Find the documented example in a seeded stream and check its tests by hand.
    rng = random.Random(0)
    for _ in range(500):
        task = generate_code_task(rng, 2)
        if task["answer"] == "def f(x): return x*3+1":
            break
    else:
        pytest.fail("the documented example never came up")
    assert task["prompt"] == "Write a Python function f(x) that returns x times 3 plus 1."
    assert (
        task["response"]
        == "<think> multiply x by 3 then add 1 </think> <answer> def f(x): return x*3+1 </answer>"
    )
    assert all(y == 3 * x + 1 for [x], y in task["tests"])
    zh = generate_code_task(random.Random(0), 2, "zh")
    en = generate_code_task(random.Random(0), 2, "en")
    assert zh["prompt"] == en["prompt"] and zh["tests"] == en["tests"]  # only the thought changes
    assert "然后" in zh["response"]
