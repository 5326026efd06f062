"""The sandbox's seccomp filter: classic BPF that fails the syscalls Landlock leaves open.

seccomp_program compiles a list of rules; SECCOMP_PROGRAM, the sandbox's own filter built from
DENIED_SYSCALLS, is compiled once at import, so the zygote has it ready before any job.
"""

from __future__ import annotations

import ctypes
import platform
import struct

from .libc import LIBC, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, check

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
    check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0))


def sandbox_seccomp_program() -> bytes | None:
    """The sandbox's filter for this machine's architecture; None where the table is unknown."""
    table = DENIED_SYSCALLS.get(platform.machine())
    if table is None:
        return None
    return seccomp_program([(number, None, EPERM) for number in table.values()])


SECCOMP_PROGRAM = sandbox_seccomp_program()
