"""The zygote: a clean interpreter with the allowed modules loaded that forks one worker per job.

It reads length-prefixed JSON jobs from its stdin and answers each on its stdout; it never runs
program code itself, so every program starts from the same clean state in a process of its own.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import time

from .worker import describe, run_worker, write_all

_HEADER = struct.Struct(">I")


def read_frame(fd: int) -> dict | None:
    """One length-prefixed JSON message from `fd`; None at end of file."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body.decode("utf-8"))


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_frame(fd: int, message: dict) -> None:
    body = json.dumps(message).encode("utf-8")
    write_all(fd, _HEADER.pack(len(body)) + body)


def _wait(pid: int, timeout_s: float) -> tuple[str, int | None]:
    """("exited", exit code or -signal) or ("timeout", None) once the worker is reaped.

    The worker's process group is killed before it is reaped, while its pid cannot yet belong to
    anyone else: on a timeout, and after an exit in case anything it started is left over.
    """
    deadline = time.monotonic() + timeout_s
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    timed_out = False
    try:
        while True:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    for kill in (os.killpg, os.kill):  # the group, or the worker alone if it had no session yet
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _, status = os.waitpid(pid, 0)
    return ("timeout", None) if timed_out else ("exited", os.waitstatus_to_exitcode(status))


def handle(request: dict) -> dict:
    """Run one job in a fresh fork; the worker's answer comes back through a memory file,
    which RLIMIT_FSIZE bounds, unlike a pipe."""
    job, start = request["job"], time.monotonic()
    result_fd = os.memfd_create("r1lab-sandbox-result", 0)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                run_worker(job, result_fd)
            finally:
                os._exit(70)
        status, code = _wait(pid, float(request["timeout_s"]))
        os.lseek(result_fd, 0, os.SEEK_SET)
        chunks, left = [], int(request["max_output"])
        while left > 0:
            chunk = os.read(result_fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(result_fd)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    return {"status": status, "returncode": code, "output": output, "elapsed_s": time.monotonic() - start}


def serve(preload: list[str], inp: int = 0, out: int = 1) -> None:
    """The zygote: load the modules programs may use, then answer jobs until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the zygote goes
    for name in preload:
        try:
            __import__(name)
        except ImportError:
            pass
    while True:
        request = read_frame(inp)
        if request is None:
            return
        try:
            reply = handle(request)
        except Exception as error:  # noqa: BLE001 -- report it; the parent scores the job 0
            reply = {"status": "zygote_error", "returncode": None, "output": "", "error": describe(error)}
        write_frame(out, reply)
