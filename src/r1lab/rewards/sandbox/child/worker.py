"""The worker: one program, in a fresh fork of the zygote, confined before any of it runs.

It takes its own session (a wall-clock timeout kills the whole process group), SIGKILL when the
zygote dies and the job's throw-away directory as its working directory; then every kernel layer
(confine.py); then, in Python, as defence in depth: only pre-imported modules, no
socket/subprocess/ctypes, and os.system/fork/remove/... and writing `open` raise PermissionError.
It answers with one JSON line: the JSON text of what the entry function returned for each test's
arguments (it never sees the expected values), the layers that took hold and those that did not.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import sys

from .confine import confine
from .libc import PR_SET_PDEATHSIG, prctl


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:300]
    except BaseException:  # noqa: BLE001 -- a program's exception may fail even to print
        return type(error).__name__


def run_worker(job: dict, result_fd: int) -> None:
    """In a fresh fork of the zygote: confine this process, run the program on every test's
    arguments, write one JSON line to `result_fd` and exit. Never returns."""
    result = {"nonce": job["nonce"], "status": "ok", "error": "", "outputs": [], "layers": [], "weak": []}
    dumps, write, exit_now = json.dumps, write_all, os._exit

    def answer() -> None:
        write(result_fd, (dumps(result) + "\n").encode("utf-8"))
        exit_now(0)  # skip atexit handlers the program may have registered

    try:
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(job["workdir"])
        for name in job["allowed_imports"]:  # the zygote loaded its list; a job may name more
            if name not in sys.modules:
                try:
                    __import__(name)
                except ImportError:
                    pass
        confine(job, result["layers"], result["weak"])
        missing = [layer for layer in job.get("required", []) if layer not in result["layers"]]
        if missing:
            raise OSError(f"could not apply {', '.join(missing)}: {'; '.join(result['weak'])}")
        # fds: the result on 3, /dev/null on 0-2, nothing else (not the zygote's pipes)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.dup2(result_fd, 3)
        result_fd = 3
        os.closerange(4, 1 << 16)
        _python_guards(job)
    except BaseException as error:  # noqa: BLE001 -- nothing of the program has run yet
        result["status"], result["error"] = "sandbox_error", describe(error)
        answer()

    outputs = result["outputs"]
    try:
        namespace = {"__name__": "__sandbox__"}
        exec(compile(job["program"], "<program>", "exec"), namespace)
        fn = namespace.get(job["entry"])
        if not callable(fn):
            raise NameError(f"the program defines no function {job['entry']!r}")
        for args in job["args"]:
            try:
                got = fn(*args) if isinstance(args, list) else fn(args)
                outputs.append(dumps(got))
            except BaseException as error:  # noqa: BLE001 -- the program's failure is its score
                outputs.append(None)
                result["error"] = describe(error)
    except BaseException as error:  # noqa: BLE001
        result["status"], result["error"] = "error", describe(error)
    answer()


def _python_guards(job: dict) -> None:
    """Python-level patches on top of the kernel's guards: easy to get around from inside Python,
    they only turn common attempts into a clear PermissionError or ImportError."""

    def blocked(*args, **kwargs):
        raise PermissionError("not allowed in the r1lab sandbox")

    import posix
    import shutil

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
