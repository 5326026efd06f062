"""Landlock (Linux >= 5.13, unprivileged): the sandbox's guard on file contents, TCP and signals.

A ruleset handles every right the kernel's ABI knows and allows only what its rules name: writes
beneath the throw-away directory and reads of it, /dev/null and /dev/urandom. From ABI 4 it denies
every TCP bind and connect; from ABI 6 it scopes signals and abstract UNIX sockets to the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import stat

from .libc import LIBC, check

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
        return check(
            LIBC.syscall(
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
    ruleset = check(
        LIBC.syscall(
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
                check(
                    LIBC.syscall(
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
        check(LIBC.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)))
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
