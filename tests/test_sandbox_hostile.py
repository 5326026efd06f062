"""Hostile programs in the code sandbox: every one must score 0 quickly and leave the test
process, its files, its data, its network and its other processes alone, with and without the
Python-level guards (then only the kernel's layers stand in the way)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from r1lab.rewards import code, sandbox
from r1lab.rewards.code import code_reward, run_sandboxed

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


# --- resources ----------------------------------------------------------------------------------


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


# --- files and data -----------------------------------------------------------------------------


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


# --- processes and the network ------------------------------------------------------------------


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


# --- forged results -----------------------------------------------------------------------------


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
