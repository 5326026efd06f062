"""The libc calls the sandbox's layers need, through ctypes (standard library only)."""

from __future__ import annotations

import ctypes
import os

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.prctl.restype = ctypes.c_int
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
LIBC.unshare.restype = ctypes.c_int
LIBC.unshare.argtypes = [ctypes.c_int]

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def check(result: int) -> int:
    """`result`, or the OSError of errno when a libc call returned -1."""
    if result == -1:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return check(LIBC.prctl(option, arg2, arg3, 0, 0))


def set_no_new_privs() -> None:
    """Neither this process nor its children can gain privileges (setuid binaries, file caps);
    Landlock and seccomp require it of a process without CAP_SYS_ADMIN."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def unshare(flags: int) -> None:
    check(LIBC.unshare(flags))
