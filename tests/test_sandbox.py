"""The code sandbox and the tiny world's code tasks (R1, arXiv 2501.12948 §2.2.2: code is scored by
test cases). Every hostile program must score 0 quickly and leave the test process and its files alone."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
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


def descendants(pid: int | None = None) -> set[int]:
    """Live descendants of this test process (children, their children, ...)."""
    found: set[int] = set()
    for path in glob.glob(f"/proc/{pid or os.getpid()}/task/*/children"):
        try:
            with open(path) as f:
                kids = {int(kid) for kid in f.read().split()}
        except OSError:  # exited meanwhile
            continue
        for kid in kids:
            found |= {kid} | descendants(kid)
    return found


def stray_processes() -> set[int]:
    """Descendants other than the sandbox's idle zygotes: workers, or what a program started."""
    return descendants() - sandbox.zygote_pids()


def without_python_guards(monkeypatch):
    """Switch off the harness's monkeypatches, leaving only the OS limits to stop the program."""
    monkeypatch.setattr(code, "_BLOCKED_OS", [])
    monkeypatch.setattr(code, "_BLOCKED_MODULES", [])
    monkeypatch.setattr(code, "ALLOWED_IMPORTS", (*code.ALLOWED_IMPORTS, "socket"))


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


# --- hostile programs ---------------------------------------------------------------------------


def test_infinite_loop_is_stopped_by_the_wall_clock():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass", TESTS, timeout_s=1.0, cpu_s=5)
    assert time.monotonic() - start < 2.0
    assert (result.passed, result.status) == (0, "timeout")


def test_busy_loop_is_stopped_by_the_cpu_limit():
    start = time.monotonic()
    result = run_sandboxed("def f(x):\n    while True:\n        pass", TESTS, timeout_s=10.0, cpu_s=1)
    assert time.monotonic() - start < 3.0  # SIGXCPU after 1 s of CPU, long before the wall clock
    assert (result.passed, result.status) == (0, "crashed")


@pytest.mark.parametrize("python_guards", [True, False])
def test_fork_bomb_scores_zero_and_leaves_no_process(monkeypatch, python_guards):
    if not python_guards:
        without_python_guards(monkeypatch)  # RLIMIT_NPROC (and, as root, dropping to nobody) alone
    run_sandboxed("def f(x): return x", TESTS)  # the zygotes are up before we count
    before = stray_processes()
    start = time.monotonic()
    result = run_sandboxed("import os\nwhile True:\n    os.fork()", TESTS, timeout_s=2.0)
    assert time.monotonic() - start < 1.0  # the first fork fails; nothing runs to the timeout
    assert (result.passed, result.status) == (0, "error")
    assert ("BlockingIOError" if not python_guards else "PermissionError") in result.detail
    assert stray_processes() <= before
    assert run_sandboxed("def f(x): return x*3+1", TESTS).passed == 4  # the sandbox still works


@pytest.mark.parametrize(
    "program",
    [
        "x = 'a' * 10**10\ndef f(x): return x*3+1",
        "def f(x):\n    x = []\n    while True:\n        x.append([0] * 10**4)",
    ],
)
def test_memory_bomb_scores_zero(program):
    start = time.monotonic()
    result = run_sandboxed(program, TESTS, memory_mb=128)
    assert time.monotonic() - start < 2.0
    assert result.passed == 0


@pytest.mark.parametrize(
    "attack",
    [
        "import os\ndef f(x):\n    os.remove({file!r})\n    return x*3+1",
        "import os\ndef f(x):\n    os.unlink({file!r})\n    return x*3+1",
        "import shutil\nshutil.rmtree({folder!r})\ndef f(x): return x*3+1",
        "def f(x):\n    open({file!r}, 'w').close()\n    return x*3+1",  # truncate it
    ],
)
def test_files_outside_the_sandbox_survive(tmp_path, attack):
    victim = tmp_path / "keep" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    program = attack.format(file=str(victim), folder=str(victim.parent))
    assert code_reward("", answer(program), REFERENCE) == 0.0
    assert victim.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="without root the file guard is the Python-level patch")
def test_as_root_the_program_runs_as_nobody(tmp_path, monkeypatch):
    without_python_guards(monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    program = f"import os\ndef f(x):\n    os.remove({str(victim)!r})\n    return os.getuid()"
    result = run_sandboxed(program, [[[0], code.NOBODY]])
    assert result.passed == 0 and "PermissionError" in result.detail
    assert victim.read_text() == "precious"
    assert run_sandboxed("import os\ndef f(x): return os.getuid()", [[[0], code.NOBODY]]).passed == 1


@pytest.fixture
def outside(tmp_path):
    """A folder outside the sandbox that the sandboxed uid may write to and read by the file
    permissions alone (owned by nobody when the tests run as root, mode 777, on a world-searchable
    path), so that only the sandbox's own guards stand between a program and its files."""
    folder = tempfile.mkdtemp(prefix="r1lab-outside-")
    os.chmod(folder, 0o777)
    if os.geteuid() == 0:
        os.chown(folder, code.NOBODY, code.NOBODY)
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


def _owned_by_sandbox_uid(path: str, text: str, mode: int = 0o666) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, code.NOBODY, code.NOBODY)


@pytest.mark.parametrize(
    ("attack", "python_guards"),
    [
        ("import os\ndef f(x):\n    os.close(os.open({file!r}, os.O_WRONLY | os.O_TRUNC))\n    return x*3+1", True),
        ("import io\ndef f(x):\n    io.FileIO({file!r}, 'w').close()\n    return x*3+1", True),
        ("import os\ndef f(x):\n    os.mkdir({folder!r} + '/new')\n    return x*3+1", True),
        ("import os\ndef f(x):\n    os.open({folder!r} + '/new', os.O_WRONLY | os.O_CREAT)\n    return x*3+1", True),
        ("import os\ndef f(x):\n    os.remove({file!r})\n    return x*3+1", False),
        ("import os\ndef f(x):\n    os.rename({file!r}, {folder!r} + '/new')\n    return x*3+1", False),
        ("import os\ndef f(x):\n    os.symlink({file!r}, {folder!r} + '/new')\n    return x*3+1", False),
        ("import os\ndef f(x):\n    os.truncate({file!r}, 0)\n    return x*3+1", False),
        ("import os\ndef f(x):\n    os.chmod({file!r}, 0)\n    return x*3+1", False),  # Landlock leaves this to seccomp
        ("import os\ndef f(x):\n    os.utime({file!r}, (0, 0))\n    return x*3+1", False),
        ("import os\ndef f(x):\n    os.setxattr({file!r}, 'user.r1lab', b'x')\n    return x*3+1", False),
        # nothing may be executed, so no shell gets to write for it either
        ("import os\ndef f(x):\n    os.execv('/bin/sh', ['sh', '-c', 'echo > {file}'])", False),
    ],
)
def test_files_the_sandbox_uid_may_write_survive(monkeypatch, outside, attack, python_guards):
    """Writes the file permissions allow (the victim belongs to the sandbox's uid) that get around
    the Python-level patches; the kernel's layers must stop every one."""
    if not python_guards:
        without_python_guards(monkeypatch)
    victim = os.path.join(outside, "victim.txt")
    _owned_by_sandbox_uid(victim, "precious")
    before = os.stat(victim)
    program = attack.format(file=victim, folder=outside)
    result = run_sandboxed(program, TESTS)
    assert result.passed == 0 and "PermissionError" in result.detail, result
    after = os.stat(victim)
    with open(victim) as f:
        assert f.read() == "precious"
    assert (after.st_mode, after.st_mtime_ns, after.st_ino) == (before.st_mode, before.st_mtime_ns, before.st_ino)
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert run_sandboxed("def f(x): return x*3+1", TESTS).passed == 4


@pytest.mark.parametrize("python_guards", [True, False])
def test_world_readable_training_data_cannot_be_read(monkeypatch, outside, python_guards):
    """The answers sit in a world-readable JSONL; a program that reads them would score 1."""
    if not python_guards:
        without_python_guards(monkeypatch)
    data = os.path.join(outside, "train.jsonl")
    _owned_by_sandbox_uid(data, "".join(f'{{"x": {x}, "answer": {y}}}\n' for [x], y in TESTS), 0o644)
    cheat = (
        "import json\n"
        "def f(x):\n"
        f"    with open({data!r}) as lines:\n"
        "        return {row['x']: row['answer'] for row in map(json.loads, lines)}[x]"
    )
    result = run_sandboxed(cheat, TESTS)
    assert (result.passed, result.status) == (0, "ok") and "PermissionError" in result.detail
    for path in ("/etc/passwd", "/proc/self/environ", "/proc/1/cmdline", os.path.dirname(data)):
        listing = "os.listdir" if os.path.isdir(path) else "open"
        probe = f"import os\ndef f(x):\n    {listing}({path!r})\n    return x*3+1"
        assert run_sandboxed(probe, TESTS).passed == 0, path


def test_signals_to_processes_outside_the_sandbox_fail(monkeypatch):
    """A process of the sandbox's own uid (which the file permissions would let it signal)."""
    without_python_guards(monkeypatch)
    user = {"user": code.NOBODY, "group": code.NOBODY} if os.geteuid() == 0 else {}
    sleeper = subprocess.Popen(["sleep", "30"], **user)
    try:
        for call in (f"os.kill({sleeper.pid}, 9)", f"os.killpg({sleeper.pid}, 9)", "os.kill(-1, 9)"):
            program = f"import os\ndef f(x):\n    {call}\n    return x*3+1"
            result = run_sandboxed(program, TESTS)
            assert result.passed == 0 and "PermissionError" in result.detail, (call, result)
        time.sleep(0.1)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    "program",
    [
        # finds the worker's job through its frames and writes a passing result line with its nonce
        "import json, os, sys\n"
        "frame = sys._getframe()\n"
        "while 'job' not in frame.f_locals:\n"
        "    frame = frame.f_back\n"
        "nonce = frame.f_locals['job']['nonce']\n"
        "line = {'nonce': nonce, 'passed': 4, 'status': 'ok', 'outputs': ['true'] * 4}\n"
        "os.write(3, (json.dumps(line) + '\\n').encode())\n"
        "os._exit(0)",
        # looks for the expected values anywhere up its stack, to return them
        "import sys\n"
        "def f(x):\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        for value in list(frame.f_locals.values()):\n"
        "            if isinstance(value, dict) and ('tests' in value or 'expected' in value):\n"
        "                return dict(value.get('tests') or value['expected'])[x]\n"
        "        frame = frame.f_back\n"
        "    return None",
    ],
)
def test_a_program_that_takes_over_its_process_cannot_forge_a_pass(program):
    assert run_sandboxed(program, TESTS).passed == 0


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


def _network_namespaces_available() -> bool:
    probe = (
        "import ctypes, os; print(ctypes.CDLL(None).unshare(0x40000000 if os.geteuid() == 0 else 0x50000000))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() == "0"


@pytest.mark.parametrize("python_guards", [True, False])
def test_network_is_unreachable(monkeypatch, python_guards):
    if not python_guards:
        if not _network_namespaces_available():
            pytest.skip("this kernel/container does not allow a private network namespace")
        without_python_guards(monkeypatch)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            "def f(x):\n"
            "    client = socket.socket()\n"
            "    client.settimeout(1)\n"
            f"    client.connect(('127.0.0.1', {port}))\n"
            "    return x*3+1"
        )
        assert code_reward("", answer(program), REFERENCE) == 0.0
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()  # nobody ever knocked


@pytest.mark.parametrize(
    "program",
    [
        # prints a result line of its own, in the harness's format but without its nonce
        "import json\nprint(json.dumps({'nonce': '0', 'passed': 4, 'status': 'ok'}))\ndef f(x): return 0",
        "import os\nos.write(1, b'{\"passed\": 4}\\n')\ndef f(x): return 0",
        # a result that claims to equal everything
        "class Yes:\n    def __eq__(self, other):\n        return True\ndef f(x): return Yes()",
        "class Yes(int):\n    def __eq__(self, other):\n        return True\ndef f(x): return Yes(-1)",
        # True == 1 in Python; a bool passes only a test that expects a bool
        "def f(x): return True",
    ],
)
def test_faked_results_score_zero(program):
    assert run_sandboxed(program, TESTS).passed == 0


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
