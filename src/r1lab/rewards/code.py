"""Code reward: run the generated program against test cases in a sandbox.

DeepSeek-R1 (arXiv 2501.12948, §2.2.2): "for LeetCode problems, a compiler can be used to generate
feedback based on predefined test cases". Here the "compiler" is a sandboxed Python process.

The program is untrusted: a policy under RL will sooner or later write infinite loops, fork bombs,
memory bombs, `rm -rf`, or read the training data for the answers. The guards are the kernel's,
for root and ordinary users alike (r1lab.rewards.sandbox, docs/sandbox.md): each program runs in
a fresh fork of a pre-started interpreter, in its own session and throw-away directory, under
resource limits, in a private network namespace, as nobody when started as root, under Landlock
(writes and reads only in its directory, no TCP, no signals out) and a seccomp filter (no sockets,
signals, ptrace, mounts, or chmod/chown of files). Python-level patches come on top as defence in
depth. On a kernel that cannot give these guarantees the sandbox refuses to run programs
(SandboxUnavailable) unless R1LAB_SANDBOX_ALLOW_UNSAFE=1.

Tests are [args, expected] pairs (JSON data). The sandbox only ever sees the arguments and sends
back the JSON text of each return value; the parent compares it with the expected value, so a
program can neither fake equality with a custom __eq__ nor forge a passing result.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import textwrap
from dataclasses import dataclass

from r1lab.rewards.format import tag_blocks
from r1lab.rewards.sandbox import ALLOW_UNSAFE_ENV, SandboxUnavailable, pool
from r1lab.rewards.sandbox.child.landlock import KNOWN_LANDLOCK_ABI

__all__ = [
    "ALLOW_UNSAFE_ENV",
    "SandboxResult",
    "SandboxUnavailable",
    "code_reward",
    "extract_program",
    "run_sandboxed",
    "sandbox_guards",
]

# R1 scores code by the tests passed; True gives 1.0 only when every test passes.
ALL_OR_NOTHING = False
MAX_OUTPUT_BYTES = 1 << 20
NOBODY = 65534
# The newest Landlock ABI the sandbox uses, at most the kernel's (lowered to test older kernels).
LANDLOCK_ABI_MAX = KNOWN_LANDLOCK_ABI
# Modules a program may import; the zygote imports all of them before any program runs.
ALLOWED_IMPORTS = (
    "array", "bisect", "cmath", "collections", "collections.abc", "copy", "dataclasses", "datetime",
    "decimal", "fractions", "functools", "heapq", "itertools", "json", "math", "operator", "os",
    "random", "re", "shutil", "statistics", "string", "sys", "time", "typing",
)  # fmt: skip

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

_BLOCKED_OS = [
    "system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "remove", "unlink", "rmdir",
    "removedirs", "rename", "renames", "replace", "truncate", "chmod", "chown", "link", "symlink",
    "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv",
    "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid", "setpgid",
]  # fmt: skip
_BLOCKED_MODULES = [
    "socket",
    "_socket",
    "subprocess",
    "_posixsubprocess",
    "ctypes",
    "_ctypes",
    "multiprocessing",
]


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    status: "ok" (the tests ran), "error" (the program raised while loading or lacks `entry`),
    "timeout" (wall clock), "crashed" (died without a result: CPU or memory limit, os._exit),
    "sandbox_error" (the sandbox itself could not start or confine the program, or the job was
    not JSON).
    """

    passed: int
    total: int
    status: str
    detail: str = ""


def _job(program: str, args: list, entry: str, workdir: str, *, cpu_s: int, memory_mb: int) -> dict:
    return {
        "program": program, "args": args, "entry": entry, "nonce": secrets.token_hex(16),
        "workdir": workdir, "nobody": NOBODY, "landlock_abi_max": LANDLOCK_ABI_MAX,
        "limits": {
            "RLIMIT_CPU": (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
            "RLIMIT_AS": (memory_mb << 20,) * 2,
            "RLIMIT_NPROC": (0, 0),
            "RLIMIT_FSIZE": (MAX_OUTPUT_BYTES,) * 2,
            "RLIMIT_NOFILE": (32, 32),
            "RLIMIT_CORE": (0, 0),
        },
        "allowed_imports": list(ALLOWED_IMPORTS), "blocked_os": list(_BLOCKED_OS),
        "blocked_modules": list(_BLOCKED_MODULES), "required": [],
    }  # fmt: skip


def sandbox_guards() -> pool.Guards:
    """What this machine's kernel gives the sandbox (probed once per process, by running a
    trivial program). Raises SandboxUnavailable where a guarantee is missing and
    R1LAB_SANDBOX_ALLOW_UNSAFE is not set."""
    return pool.guards(
        list(ALLOWED_IMPORTS),
        lambda workdir: _job("def f(x): return x", [[1]], "f", workdir, cpu_s=5, memory_mb=256),
    )


def run_sandboxed(
    program: str,
    tests: list,
    *,
    timeout_s: float = 2.0,
    cpu_s: int = 2,
    memory_mb: int = 256,
    entry: str = "f",
) -> SandboxResult:
    """Run `program` in the sandbox and count the tests on which `entry(*args) == expected`.

    Never raises for anything the program does; a run that times out, crashes or cannot be
    parsed passes 0 tests. The temporary working directory is deleted afterwards. Raises
    SandboxUnavailable when this machine cannot confine the program (see sandbox_guards).
    """
    total = len(tests)
    if not all(isinstance(test, (list, tuple)) and len(test) == 2 for test in tests):
        return SandboxResult(0, total, "sandbox_error", "tests must be [args, expected] pairs")
    args, expected = [test[0] for test in tests], [test[1] for test in tests]
    found = sandbox_guards()
    with tempfile.TemporaryDirectory(prefix="r1lab-sandbox-", ignore_cleanup_errors=True) as workdir:
        job = _job(program, args, entry, workdir, cpu_s=cpu_s, memory_mb=memory_mb)
        job["required"] = list(found.layers)  # never run with fewer layers than the probe saw
        try:
            json.dumps(job)
        except (TypeError, ValueError) as error:
            return SandboxResult(0, total, "sandbox_error", f"job is not JSON: {error}")
        reply = pool.get_pool(list(ALLOWED_IMPORTS)).run(job, timeout_s, MAX_OUTPUT_BYTES)
    if reply.get("status") == "timeout":
        return SandboxResult(0, total, "timeout", f"over {timeout_s} s")
    if reply.get("status") != "exited":
        return SandboxResult(0, total, "sandbox_error", str(reply.get("error", reply.get("status"))))
    return _read_result(str(reply.get("output", "")), job["nonce"], expected, reply.get("returncode"))


def _read_result(output: str, nonce: str, expected: list, returncode) -> SandboxResult:
    """Score the worker's JSON line (the last one that carries our nonce) against `expected`."""
    total = len(expected)
    for line in reversed(output.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce:
            outputs = record.get("outputs")
            outputs = outputs if isinstance(outputs, list) else []
            passed = sum(_same(out, want) for out, want in zip(outputs, expected))
            return SandboxResult(passed, total, str(record.get("status")), str(record.get("error", "")))
    return SandboxResult(0, total, "crashed", f"exit code {returncode}")


def _same(output, expected) -> bool:
    """Whether a returned value's JSON text reads back as the expected value."""
    if not isinstance(output, str):
        return False
    try:
        return _equal(json.loads(output), expected)
    except (ValueError, RecursionError):  # malformed, too deep, or an int past the digit limit
        return False


def _equal(got, expected) -> bool:
    """JSON equality, except that a bool equals only a bool: in Python True == 1, and a program
    answering True everywhere would pass every test that expects 1. 7.0 still equals 7."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_equal, got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_equal(got[k], expected[k]) for k in got)
    return got == expected


def extract_program(completion: str) -> str | None:
    """The program in a completion: the last answer block (a ```python fence inside it is
    unwrapped), else the last ```python fence anywhere; None if there is neither."""
    answers = tag_blocks(completion, "answer")
    fences = _FENCE.findall(answers[-1] if answers else completion)
    if fences:
        text = fences[-1]
    elif answers:
        text = answers[-1]
    else:
        return None
    # dedent, not strip: "<answer> def f(x):\n    return x </answer>" must keep its indentation
    return textwrap.dedent(text).strip() or None


def code_reward(prompt: str, completion: str, reference: dict) -> float:
    """Share of reference["tests"] the completion's program passes (1/0 if ALL_OR_NOTHING).

    The function under test is reference.get("entry", "f"). A missing program, missing tests or
    any failure of the program scores 0.0; the one error raised is SandboxUnavailable, when this
    machine cannot confine programs (see run_sandboxed).
    """
    try:
        program, tests = extract_program(completion), reference.get("tests") or []
        if not program or not program.strip() or not tests:
            return 0.0
        result = run_sandboxed(program, list(tests), entry=str(reference.get("entry", "f")))
        if ALL_OR_NOTHING:
            return float(result.passed == result.total)
        return result.passed / result.total
    except SandboxUnavailable:  # not the program's doing: stop loudly rather than score 0 forever
        raise
    except Exception:  # noqa: BLE001 -- a reward must never stop training; count it as a failed program
        return 0.0
