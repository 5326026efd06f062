"""The child side of the code sandbox: kernel confinement, the zygote and the worker harness.

This file runs as its own interpreter, ``python -I -S child.py PRELOAD_JSON`` (no site-packages,
no environment, no user paths), so it imports nothing but the standard library. r1lab imports it
too, for its constants and for tests of each kernel layer.

The zygote imports every module a program may use once, then serves jobs read from its stdin: for
each job it forks a worker, which confines itself and runs one program, and answers on its stdout.
The zygote itself never runs program code, so every program starts from the same clean state and
no two programs ever share a process.

A worker confines itself in this order (each step is a layer; ``layers`` in the result names those
that took hold):
  * its own session (a wall-clock timeout kills the whole process group), SIGKILL when the zygote
    dies, the job's throw-away directory as its working directory;
  * resource limits: CPU seconds, address space, processes (a fork bomb fails at its first fork),
    file size, open files, no core dumps;
  * "netns": a fresh network namespace with only a downed loopback (an unprivileged user needs a
    user namespace for it, which comes with it);
  * "nobody": when started as root, uid/gid 65534, because RLIMIT_NPROC does not bind root;
  * no_new_privs, then "landlock-fs": Landlock (Linux >= 5.13, unprivileged) allows writes only
    beneath the throw-away directory and reads only of it, /dev/null and /dev/urandom; every module
    the program may import is already loaded, so the interpreter needs no other file.
    "landlock-net" (ABI >= 4) denies every TCP bind and connect; "landlock-scope" (ABI >= 6)
    denies signals to processes outside the sandbox and connecting to abstract UNIX sockets;
  * "seccomp": a syscall filter that fails sockets, signals, ptrace and process memory access,
    namespaces and mounts, keyrings, io_uring, bpf, and the metadata writes Landlock does not cover
    (chmod, chown, extended attributes, timestamps) with EPERM;
  * in Python, as defence in depth: only pre-imported modules, no socket/subprocess/ctypes, and
    os.system/fork/remove/... and writing `open` raise PermissionError.

The worker sends back the JSON text of what the entry function returned for each test's arguments;
it never sees the expected values, which the parent compares. A program that takes over its own
process (it can) can therefore only claim return values, which is what solving the task means.
"""

from __future__ import annotations

import builtins
import ctypes
import io
import json
import os
import platform
import resource
import select
import signal
import stat
import struct
import sys
import time

# --- libc -----------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.unshare.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _check(result: int) -> int:
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0))


def set_no_new_privs() -> None:
    """Neither this process nor its children can gain privileges (setuid binaries, file caps);
    Landlock and seccomp require it of a process without CAP_SYS_ADMIN."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


# --- Landlock -------------------------------------------------------------------------------------

SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
KNOWN_LANDLOCK_ABI = 7  # the newest ABI whose rights this file knows; newer kernels get these

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
# rights that mean something on a file rather than a directory; a file rule may hold only these
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is not built in or not enabled."""
    try:
        return _check(
            _libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
                None,
                ctypes.c_size_t(0),
                ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
            )  # fmt: skip
        )
    except OSError:  # ENOSYS: not built in; EOPNOTSUPP: disabled at boot
        return 0


def fs_rights(abi: int) -> int:
    """Every filesystem right that Landlock ABI `abi` knows (a ruleset handles all of them)."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_ruleset(rules: list[tuple[str, int]], abi: int) -> int:
    """A Landlock ruleset (its fd) that denies everything ABI `abi` can deny but `rules`.

    rules: (path, rights) pairs; a right this ABI does not know is dropped, and a file gets only
    the rights that apply to files. With ABI >= 4 no TCP port is allowed, with ABI >= 6 signals
    and abstract UNIX sockets are scoped to the sandbox. Paths are opened now, so a caller about
    to drop privileges can build the ruleset first and restrict itself after.
    """
    handled = fs_rights(abi)
    attr = _RulesetAttr(
        handled,
        NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # what an older kernel knows of the struct
    ruleset = _check(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(size),
            ctypes.c_uint32(0),
        )  # fmt: skip
    )
    try:
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = rights & handled
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= FS_FILE_RIGHTS
                rule = _PathBeneathAttr(allowed, fd)
                _check(
                    _libc.syscall(
                        ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
                        ctypes.c_int(ruleset),
                        ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    )  # fmt: skip
                )
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def landlock_restrict_self(ruleset: int) -> None:
    """Enforce the ruleset on this process and every process it starts; it cannot be undone.
    Needs no_new_privs (or CAP_SYS_ADMIN). Closes the ruleset."""
    try:
        _check(_libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)))
    finally:
        os.close(ruleset)


def sandbox_rules(workdir: str) -> list[tuple[str, int]]:
    """All the sandbox may touch: its throw-away directory (anything but executing),
    /dev/null (read, write, O_TRUNC: open(os.devnull, "w")) and /dev/urandom (read)."""
    return [
        (workdir, fs_rights(KNOWN_LANDLOCK_ABI) & ~FS_EXECUTE),
        (os.devnull, FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE),
        ("/dev/urandom", FS_READ_FILE),
    ]


# --- seccomp --------------------------------------------------------------------------------------

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
# Syscalls a scored program never needs and that reach outside its sandbox. Landlock covers file
# contents and TCP; these cover the rest: sockets of every family, signals, another process's
# memory, namespaces and mounts, keyrings, the metadata of files (which Landlock does not guard),
# truncate() by path (Landlock guards it only from ABI 3; ftruncate of an open file stays), and
# io_uring, whose operations would not pass through this filter.
DENIED_SYSCALLS = {
    "x86_64": {
        "socket": 41, "socketpair": 53,
        "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
        "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "open_tree_attr": 467,
        "add_key": 248, "request_key": 249, "keyctl": 250,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "setxattrat": 463,
        "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199, "removexattrat": 466,
        "file_setattr": 469, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
        "truncate": 76,
    },
    "aarch64": {  # the generic table: no legacy chmod, chown, utime
        "socket": 198, "socketpair": 199,
        "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
        "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "open_tree_attr": 467,
        "add_key": 217, "request_key": 218, "keyctl": 219,
        "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "fchown": 55, "fchownat": 54,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "setxattrat": 463,
        "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16, "removexattrat": 466,
        "file_setattr": 469, "utimensat": 88, "truncate": 45,
    },
}  # fmt: skip
EPERM = 1

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg0's low word (little endian)


def seccomp_program(rules: list[tuple[int, int | None, int]], arch: str | None = None) -> bytes:
    """A classic-BPF seccomp filter: each (syscall number, first argument or None, errno) rule
    fails that call with that errno; everything else is allowed. A syscall of another ABI (i386,
    x32 on x86_64) kills the process, so no second syscall table gets around the list."""
    arch = arch or platform.machine()
    code: list[tuple[int, int | str, int | str, int]] = [
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_BPF_JEQ_K, 0, "kill", AUDIT_ARCH[arch]),
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if arch == "x86_64":
        code.append((_BPF_JGE_K, "kill", 0, X32_SYSCALL_BIT))
    errnos = sorted({e for _, _, e in rules})
    for number, arg0, error in rules:
        if arg0 is None:
            code.append((_BPF_JEQ_K, f"errno{error}", 0, number))
        else:  # nr == number and arg0 == value; reload nr for the rules after it
            code += [
                (_BPF_JEQ_K, 0, 3, number),
                (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARG0),
                (_BPF_JEQ_K, f"errno{error}", 0, arg0 & 0xFFFFFFFF),
                (_BPF_LD_W_ABS, 0, 0, _OFFSET_NR),
            ]
    labels = {"kill": len(code) + 1}
    code.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    code.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS))
    for error in errnos:
        labels[f"errno{error}"] = len(code)
        code.append((_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | error))
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError("seccomp filter too long for classic BPF jumps")
        out += struct.pack("=HBBI", op, jt, jf, k)
    return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_install(program: bytes) -> None:
    """Attach a filter from seccomp_program to this process (and every process it starts).
    Needs no_new_privs (or CAP_SYS_ADMIN); filters only ever add up."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0))


def sandbox_seccomp_program() -> bytes | None:
    """The sandbox's filter for this machine's architecture; None where the table is unknown."""
    table = DENIED_SYSCALLS.get(platform.machine())
    if table is None:
        return None
    return seccomp_program([(number, None, EPERM) for number in table.values()])


SECCOMP_PROGRAM = sandbox_seccomp_program()


# --- the worker -------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:300]
    except BaseException:  # noqa: BLE001 -- a program's exception may fail even to print
        return type(error).__name__


def confine(job: dict, layers: list[str], weak: list[str]) -> None:
    """Apply every kernel layer this machine offers to this process (see the module docstring).

    Appends what took hold to `layers` and what did not to `weak`; raises only when a step that
    must not fail (dropping root) fails.
    """
    for name, (soft, hard) in job["limits"].items():  # never above the limits we were given
        kind = getattr(resource, name)
        _, cap = resource.getrlimit(kind)
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(kind, (soft, hard))
    layers.append("rlimits")

    root = os.geteuid() == 0
    abi = min(landlock_abi(), int(job.get("landlock_abi_max", KNOWN_LANDLOCK_ABI)))
    ruleset = None
    if abi > 0:
        try:  # opened while the paths are still reachable: before dropping root
            ruleset = landlock_ruleset(sandbox_rules(job["workdir"]), abi)
        except OSError as error:
            weak.append(f"landlock-fs: {error}")
    else:
        weak.append("landlock-fs: this kernel has no Landlock")

    try:  # without root a network namespace needs a user namespace of its own
        unshare(CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET)
        layers.append("netns")
    except OSError as error:
        weak.append(f"netns: {error}")

    if root:  # RLIMIT_NPROC does not bind root, and nobody owns none of the caller's files
        nobody = job["nobody"]
        os.chown(job["workdir"], nobody, nobody)
        os.setgroups([])
        os.setgid(nobody)
        os.setuid(nobody)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of uid clears it
        layers.append("nobody")

    set_no_new_privs()
    if ruleset is not None:
        try:
            landlock_restrict_self(ruleset)
            layers.append("landlock-fs")
            if abi >= 4:
                layers.append("landlock-net")
            if abi >= 6:
                layers.append("landlock-scope")
        except OSError as error:
            weak.append(f"landlock-fs: {error}")
    if abi < 4:
        weak.append(f"landlock-net: Landlock ABI {abi} < 4 cannot deny TCP")
    if abi < 6:
        weak.append(f"landlock-scope: Landlock ABI {abi} < 6 cannot scope signals")

    program = SECCOMP_PROGRAM
    if program is None:
        weak.append(f"seccomp: no syscall table for {platform.machine()}")
    else:
        try:
            seccomp_install(program)
            layers.append("seccomp")
        except OSError as error:
            weak.append(f"seccomp: {error}")


def run_worker(job: dict, result_fd: int) -> None:
    """In a fresh fork of the zygote: confine this process, run the program on every test's
    arguments, write one JSON line to `result_fd` and exit. Never returns."""
    result = {"nonce": job["nonce"], "status": "ok", "error": "", "outputs": [], "layers": [], "weak": []}
    dumps, write, exit_now = json.dumps, _write_all, os._exit

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
        result["status"], result["error"] = "sandbox_error", _describe(error)
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
                result["error"] = _describe(error)
    except BaseException as error:  # noqa: BLE001
        result["status"], result["error"] = "error", _describe(error)
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


# --- the zygote -------------------------------------------------------------------------------------

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
    _write_all(fd, _HEADER.pack(len(body)) + body)


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
            reply = {"status": "zygote_error", "returncode": None, "output": "", "error": _describe(error)}
        write_frame(out, reply)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])
