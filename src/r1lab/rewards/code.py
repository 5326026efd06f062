"""Code reward: run the generated program against test cases in a sandbox.

DeepSeek-R1 (arXiv 2501.12948, §2.2.2): "for LeetCode problems, a compiler can be used to generate
feedback based on predefined test cases". Here the "compiler" is a separate Python process.

The program is untrusted: a policy under RL will sooner or later write infinite loops, fork bombs,
memory bombs and `rm -rf`. The real guards are the operating system's:
  * a child process (`python -I -S`: no site-packages, no environment, no user paths) in a
    throwaway working directory, with an empty environment, in its own session so that a
    wall-clock timeout kills the whole process group;
  * resource limits set before the program runs: CPU seconds, address space, processes (a fork
    bomb fails at its first fork), file size, open files, no core dumps;
  * when the kernel allows it, a fresh network namespace (no interface but a downed loopback);
  * when started as root, the child drops to uid/gid 65534 (nobody): RLIMIT_NPROC does not bind
    root, and nobody cannot touch the caller's files.
Defense in depth on top, inside the child's interpreter: only a list of pre-imported stdlib
modules can be imported; socket, subprocess, ctypes are gone; os.system/fork/remove/…, shutil.rmtree
and writing `open` raise PermissionError. These patches are easy to get around from inside
Python; they are not what keeps the machine safe, the limits above are.

Tests are [args, expected] pairs (JSON data); a result passes when its JSON round trip equals the
expected value, so a returned object cannot fake equality with a custom __eq__.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass

from r1lab.rewards.format import tag_blocks

# R1 scores code by the tests passed; True gives 1.0 only when every test passes.
ALL_OR_NOTHING = False
MAX_OUTPUT_BYTES = 1 << 20
NOBODY = 65534
# Modules a program may import; all are imported before privileges are dropped.
ALLOWED_IMPORTS = (
    "array", "bisect", "cmath", "collections", "collections.abc", "copy", "dataclasses", "datetime",
    "decimal", "fractions", "functools", "heapq", "itertools", "json", "math", "operator", "os",
    "random", "re", "shutil", "statistics", "string", "sys", "time", "typing",
)  # fmt: skip

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

# Runs inside the child. Reads the job as JSON on stdin, writes one JSON line to the saved stdout.
_HARNESS = r"""
import builtins, io, json, os, resource, sys

job = json.loads(sys.stdin.buffer.read().decode("utf-8"))

for name, (soft, hard) in job["limits"].items():  # never above the limits we were given
    kind = getattr(resource, name)
    _, cap = resource.getrlimit(kind)
    if cap != resource.RLIM_INFINITY:
        soft, hard = min(soft, cap), min(hard, cap)
    resource.setrlimit(kind, (soft, hard))

weak = []  # guards this machine would not give us; the parent warns about them
try:  # CLONE_NEWNET; without root it needs a user namespace too (CLONE_NEWUSER)
    import ctypes
    flags = 0x40000000 if os.geteuid() == 0 else 0x50000000
    if ctypes.CDLL(None, use_errno=True).unshare(flags) != 0:
        weak.append("no private network namespace")
except Exception:
    weak.append("no private network namespace")

for name in job["allowed_imports"]:
    try:
        __import__(name)
    except ImportError:
        pass

if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root
    try:
        os.chown(".", job["nobody"], job["nobody"])
        os.setgroups([])
        os.setgid(job["nobody"])
        os.setuid(job["nobody"])
    except OSError:
        weak.append("could not drop root, so RLIMIT_NPROC does not apply")

result_fd = os.dup(1)
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
os.dup2(devnull, 2)

def blocked(*args, **kwargs):
    raise PermissionError("not allowed in the r1lab sandbox")

import posix, shutil
for module, names in ((os, job["blocked_os"]), (posix, job["blocked_os"]), (shutil, ["rmtree", "move"])):
    for name in names:
        if hasattr(module, name):
            setattr(module, name, blocked)
for name in job["blocked_modules"]:
    sys.modules[name] = None
real_open = builtins.open
def read_only_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        raise PermissionError("writing files is not allowed in the r1lab sandbox")
    return real_open(file, mode, *args, **kwargs)
builtins.open = io.open = read_only_open

class NoNewImports:
    @staticmethod
    def find_spec(name, path=None, target=None):
        raise ImportError(f"import of {name!r} is not allowed in the r1lab sandbox")
sys.meta_path.insert(0, NoNewImports)

def describe(error):
    try:
        return f"{type(error).__name__}: {error}"[:300]
    except BaseException:
        return type(error).__name__

dumps, loads, write, exit_now = json.dumps, json.loads, os.write, os._exit
result = {"nonce": job["nonce"], "passed": 0, "status": "ok", "error": "", "weak": weak}
try:
    namespace = {"__name__": "__sandbox__"}
    exec(compile(job["program"], "<program>", "exec"), namespace)
    fn = namespace.get(job["entry"])
    if not callable(fn):
        raise NameError(f"the program defines no function {job['entry']!r}")
    for args, expected in job["tests"]:
        try:
            got = fn(*args) if isinstance(args, list) else fn(args)
            if loads(dumps(got)) == expected:
                result["passed"] += 1
        except BaseException as error:
            result["error"] = describe(error)
except BaseException as error:
    result["status"], result["error"] = "error", describe(error)
write(result_fd, (dumps(result) + "\n").encode("utf-8"))
exit_now(0)  # skip atexit handlers the program may have registered
"""

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
    "sandbox_error" (the sandbox itself could not start or the job was not JSON).
    """

    passed: int
    total: int
    status: str
    detail: str = ""


def run_sandboxed(
    program: str,
    tests: list,
    *,
    timeout_s: float = 2.0,
    cpu_s: int = 2,
    memory_mb: int = 256,
    entry: str = "f",
) -> SandboxResult:
    """Run `program` in a child process and count the tests on which `entry(*args) == expected`.

    Never raises for anything the program does; a run that times out, crashes or cannot be
    parsed passes 0 tests. The temporary working directory is deleted afterwards.
    """
    total = len(tests)
    nonce = secrets.token_hex(16)  # a line the program prints cannot pass for the harness's
    limits = {
        "RLIMIT_CPU": (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        "RLIMIT_AS": (memory_mb << 20,) * 2,
        "RLIMIT_NPROC": (0, 0),
        "RLIMIT_FSIZE": (MAX_OUTPUT_BYTES,) * 2,
        "RLIMIT_NOFILE": (32, 32),
        "RLIMIT_CORE": (0, 0),
    }
    job = {
        "program": program, "tests": tests, "entry": entry, "nonce": nonce, "limits": limits,
        "allowed_imports": ALLOWED_IMPORTS, "blocked_os": _BLOCKED_OS,
        "blocked_modules": _BLOCKED_MODULES, "nobody": NOBODY,
    }  # fmt: skip
    try:
        payload = json.dumps(job).encode("utf-8")
    except (TypeError, ValueError) as error:
        return SandboxResult(0, total, "sandbox_error", f"job is not JSON: {error}")

    with (
        tempfile.TemporaryDirectory(prefix="r1lab-sandbox-", ignore_cleanup_errors=True) as workdir,
        tempfile.TemporaryFile() as out,  # a file, not a pipe: RLIMIT_FSIZE bounds what comes back
    ):
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HARNESS],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL,
                cwd=workdir, env={}, start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as error:
            return SandboxResult(0, total, "sandbox_error", str(error))
        try:
            proc.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return SandboxResult(0, total, "timeout", f"over {timeout_s} s")
        finally:
            if proc.returncode is None:  # timed out or interrupted: the child is not reaped yet
                _kill_group(proc)
        out.seek(0)
        output = out.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")
    return _read_result(output, nonce, total, proc.returncode)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it is a session leader) and reap the child.

    Only called before the child is reaped: until then its pid, which is the group's id, cannot
    have been reused by an unrelated process.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
    proc.wait()


def _read_result(output: str, nonce: str, total: int, returncode: int) -> SandboxResult:
    """The harness's JSON line (the last one that carries our nonce) as a SandboxResult."""
    for line in reversed(output.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce:
            for weakness in record.get("weak") or []:  # the default filter shows each one once
                warnings.warn(f"r1lab sandbox: {weakness}; only the Python-level guards remain", stacklevel=3)
            passed = record.get("passed")
            passed = min(max(passed, 0), total) if type(passed) is int else 0
            return SandboxResult(passed, total, str(record.get("status")), str(record.get("error", "")))
    return SandboxResult(0, total, "crashed", f"exit code {returncode}")


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

    The function under test is reference.get("entry", "f"). Never raises: a missing program,
    missing tests or any sandbox failure scores 0.0.
    """
    try:
        program, tests = extract_program(completion), reference.get("tests") or []
        if not program or not program.strip() or not tests:
            return 0.0
        result = run_sandboxed(program, list(tests), entry=str(reference.get("entry", "f")))
        if ALL_OR_NOTHING:
            return float(result.passed == result.total)
        return result.passed / result.total
    except Exception:  # noqa: BLE001 -- a reward must never stop training; count it as a failed program
        return 0.0
