"""The parent side of the code sandbox: a pool of zygotes, the kernel-guard check and its policy.

A zygote (child/zygote.py) is a clean interpreter with the allowed modules loaded; it forks one
worker per program, so starting a program costs a fork and a few syscalls instead of an interpreter
(~8 ms instead of ~120 ms per program on a busy 2-core machine; docs/sandbox.md). The pool
keeps up to `size` zygotes, one per usable CPU by default (R1LAB_SANDBOX_WORKERS overrides it),
so that the threads RewardSet scores code on run their programs at the same time. Each thread
borrows a zygote for one program and gives it back.

Before the first program, a probe job reports which kernel layers this machine gives. If a
guarantee has no layer at all (on a kernel without Landlock, nothing stops a program from reading
the training data, or, without root, from overwriting the user's files), every run raises
SandboxUnavailable unless R1LAB_SANDBOX_ALLOW_UNSAFE=1 is set; a missing layer whose guarantee
another layer still gives is a warning. Later jobs require every layer the probe saw, so a worker
that cannot apply one refuses to run its program instead of running it with less.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r1lab.rewards.sandbox.child.landlock import KNOWN_LANDLOCK_ABI, landlock_abi

ALLOW_UNSAFE_ENV = "R1LAB_SANDBOX_ALLOW_UNSAFE"
WORKERS_ENV = "R1LAB_SANDBOX_WORKERS"
# A zygote runs the child package's entry file in a bare interpreter; it finds its package itself.
CHILD_SCRIPT = Path(__file__).resolve().parent / "child" / "__main__.py"
REPLY_GRACE_S = 10.0  # the zygote enforces the timeout; this only catches a zygote that hangs

log = logging.getLogger("r1lab.sandbox")

# What the sandbox promises, and the layers that give it (any one suffices).
GUARANTEES = {
    "file contents: writes only in the throw-away directory, reads only of it": ("landlock-fs",),
    "file metadata (chmod, chown, xattrs, timestamps) of the user's files": ("seccomp", "nobody"),
    "network (TCP, UDP, UNIX sockets)": ("netns", "seccomp"),
    "signals to processes outside the sandbox": ("landlock-scope", "seccomp"),
    "processes, CPU, memory and file size": ("rlimits",),
}


class SandboxUnavailable(RuntimeError):
    """This machine's kernel cannot contain a program, and running one anyway was not allowed."""


class SandboxWarning(UserWarning):
    """A kernel layer of the sandbox is missing, but another one still gives its guarantee."""


@dataclass(frozen=True)
class Guards:
    """The probe's findings. layers: those that took hold; weak: why the others did not;
    missing: guarantees no layer gives (non-empty: the sandbox refuses unless allowed)."""

    layers: tuple[str, ...]
    weak: tuple[str, ...]
    landlock_abi: int
    missing: tuple[str, ...]

    def report(self) -> str:
        lines = [f"layers: {', '.join(self.layers) or 'none'} (Landlock ABI {self.landlock_abi})"]
        lines += [f"  not available: {reason}" for reason in self.weak]
        lines += [f"  NOT GUARANTEED: {name}" for name in self.missing]
        return "\n".join(lines)


def missing_guarantees(layers) -> tuple[str, ...]:
    """The guarantees of GUARANTEES that none of `layers` gives."""
    return tuple(name for name, givers in GUARANTEES.items() if not any(g in layers for g in givers))


def unsafe_allowed() -> bool:
    return os.environ.get(ALLOW_UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return struct.pack(">I", len(body)) + body


class ZygoteBroken(RuntimeError):
    """The zygote died or stopped answering; it is killed and replaced."""


class Zygote:
    """One zygote process and its two pipes. Used by one thread at a time."""

    def __init__(self, preload: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(CHILD_SCRIPT), json.dumps(list(preload))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", env={},
            start_new_session=True, close_fds=True, bufsize=0,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, message: dict, timeout_s: float) -> dict:
        """Send one job and wait for its reply; ZygoteBroken when the zygote fails us."""
        deadline = time.monotonic() + timeout_s
        data = _frame(message)
        try:
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data) :]
            header = self._read(4, deadline)
            return json.loads(self._read(struct.unpack(">I", header)[0], deadline).decode("utf-8"))
        except (OSError, ValueError) as error:
            raise ZygoteBroken(str(error)) from error

    def _read(self, n: int, deadline: float) -> bytes:
        fd, chunks = self.proc.stdout.fileno(), []
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ZygoteBroken("the zygote did not answer in time")
            chunk = os.read(fd, n)
            if not chunk:
                raise ZygoteBroken("the zygote exited")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        """SIGKILL the zygote (its workers die with it: PR_SET_PDEATHSIG) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()

    def close(self) -> None:
        """End of its stdin: the zygote finishes the job it has and exits."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
            self.proc.stdout.close()
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


class Pool:
    """Up to `size` zygotes, started on demand, shared by the threads of one process."""

    def __init__(self, size: int, preload: list[str]) -> None:
        self.size, self.preload = max(1, size), list(preload)
        self._idle: list[Zygote] = []
        self._started = 0
        self._all: set[Zygote] = set()
        self._cond = threading.Condition()
        self._closed = False

    def pids(self) -> set[int]:
        """The zygotes' pids (for tests that count processes)."""
        with self._cond:
            return {z.pid for z in self._all}

    def _checkout(self) -> Zygote:
        dead = []
        with self._cond:
            while True:
                while self._idle:
                    zygote = self._idle.pop()
                    if zygote.proc.poll() is None:
                        break
                    dead.append(zygote)  # killed from outside while idle (the OOM killer, a user)
                    self._started -= 1
                    self._all.discard(zygote)
                else:
                    zygote = None
                if zygote is not None or self._started < self.size:
                    break
                self._cond.wait()
            if zygote is None:
                self._started += 1
        for corpse in dead:
            corpse.kill()
        if zygote is not None:
            return zygote
        try:
            zygote = Zygote(self.preload)
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.add(zygote)
        return zygote

    def _checkin(self, zygote: Zygote, healthy: bool) -> None:
        with self._cond:
            keep = healthy and not self._closed
            if keep:
                self._idle.append(zygote)
            else:
                self._started -= 1
                self._all.discard(zygote)
            self._cond.notify()
        if keep:
            return
        if healthy:
            zygote.close()
        else:
            zygote.kill()

    def run(self, job: dict, timeout_s: float, max_output: int) -> dict:
        """The zygote's reply for one job; a zygote that breaks is replaced and the job retried once."""
        request = {"job": job, "timeout_s": timeout_s, "max_output": max_output}
        for attempt in range(2):
            zygote = self._checkout()
            try:
                reply = zygote.request(request, timeout_s + REPLY_GRACE_S)
            except ZygoteBroken as error:
                self._checkin(zygote, healthy=False)
                if attempt:
                    return {"status": "zygote_error", "returncode": None, "output": "", "error": str(error)}
                continue
            except BaseException:
                self._checkin(zygote, healthy=False)  # mid-request: its pipe state is unknown
                raise
            self._checkin(zygote, healthy=True)
            return reply
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._started -= len(idle)
            for zygote in idle:
                self._all.discard(zygote)
        for zygote in idle:
            zygote.close()


def default_workers() -> int:
    if os.environ.get(WORKERS_ENV):
        return int(os.environ[WORKERS_ENV])
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_lock = threading.Lock()
_probe_lock = threading.Lock()  # the threads of a first batch wait for one probe, not run one each
_state: dict = {"pid": None, "pool": None, "guards": None}


def get_pool(preload: list[str]) -> Pool:
    """This process's pool; a forked child (a DataLoader worker) gets its own, never its parent's."""
    with _lock:
        if _state["pid"] != os.getpid():
            _state.update(pid=os.getpid(), pool=Pool(default_workers(), preload), guards=None)
        return _state["pool"]


def zygote_pids() -> set[int]:
    """The pids of this process's zygotes (they are its children for as long as it runs)."""
    with _lock:
        pool = _state["pool"] if _state["pid"] == os.getpid() else None
    return pool.pids() if pool is not None else set()


def reset() -> None:
    """Close this process's zygotes and forget the probe (the next job starts afresh)."""
    with _lock:
        pool = _state["pool"] if _state["pid"] == os.getpid() else None
        _state.update(pid=None, pool=None, guards=None)
    if pool is not None:
        pool.close()


atexit.register(reset)


def probe(pool: Pool, probe_job: dict) -> Guards:
    """Run a trivial program with nothing required and see which layers took hold."""
    reply = pool.run(probe_job, timeout_s=10.0, max_output=1 << 16)
    record = None
    for line in reversed(reply.get("output", "").splitlines()):
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and candidate.get("nonce") == probe_job["nonce"]:
            record = candidate
            break
    if record is None or record.get("outputs") != ["1"]:
        raise SandboxUnavailable(f"the code sandbox's self-test failed: {reply}")
    layers = tuple(record.get("layers") or ())
    return Guards(
        layers=layers, weak=tuple(record.get("weak") or ()),
        landlock_abi=min(landlock_abi(), int(probe_job.get("landlock_abi_max", KNOWN_LANDLOCK_ABI))),
        missing=missing_guarantees(layers),
    )  # fmt: skip


def guards(preload: list[str], probe_job: Callable[[str], dict]) -> Guards:
    """This process's Guards (probed once, with the job `probe_job(workdir)` builds), after the
    policy: raises SandboxUnavailable when a guarantee is missing and R1LAB_SANDBOX_ALLOW_UNSAFE
    is not set; warns once about missing layers."""
    pool = get_pool(preload)
    with _lock:
        found = _state["guards"]
    if found is None:
        with _probe_lock:
            with _lock:
                found = _state["guards"]
            if found is None:
                with tempfile.TemporaryDirectory(prefix="r1lab-sandbox-", ignore_cleanup_errors=True) as workdir:
                    found = probe(pool, probe_job(workdir))
                with _lock:
                    _state["guards"] = found
                _announce(found)
    if found.missing and not unsafe_allowed():
        raise SandboxUnavailable(
            "r1lab's code sandbox cannot contain programs on this machine:\n"
            f"{found.report()}\n"
            "Code rewards would run policy-written programs with these holes. Use a kernel with "
            "Landlock (Linux >= 5.13 with 'landlock' in the LSM list) and seccomp, or accept the "
            f"risk with {ALLOW_UNSAFE_ENV}=1 in the environment (with Hydra: "
            f"+hydra.job.env_set.{ALLOW_UNSAFE_ENV}=1)."
        )
    return found


def _announce(found: Guards) -> None:
    if found.missing:
        message = f"r1lab code sandbox is NOT confining programs:\n{found.report()}"
        if unsafe_allowed():
            message += f"\nrunning them anyway because {ALLOW_UNSAFE_ENV} is set"
        log.error(message)
        warnings.warn(message, SandboxWarning, stacklevel=4)
    elif found.weak:
        message = f"r1lab code sandbox runs without some kernel layers, others cover them:\n{found.report()}"
        log.warning(message)
        warnings.warn(message, SandboxWarning, stacklevel=4)
    else:
        log.info("r1lab code sandbox: %s", found.report())
