"""Every kernel layer of the sandbox, applied by a worker to itself before it runs a program.

The order (each step is a layer; ``layers`` in the worker's result names those that took hold):
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
    (chmod, chown, extended attributes, timestamps) with EPERM.
Before these the worker takes its own session and working directory, and after them it adds the
Python-level guards (worker.py).
"""

from __future__ import annotations

import os
import platform
import resource
import signal

from .landlock import KNOWN_LANDLOCK_ABI, landlock_abi, landlock_restrict_self, landlock_ruleset, sandbox_rules
from .libc import CLONE_NEWNET, CLONE_NEWUSER, PR_SET_PDEATHSIG, prctl, set_no_new_privs, unshare
from .seccomp import SECCOMP_PROGRAM, seccomp_install


def confine(job: dict, layers: list[str], weak: list[str]) -> None:
    """Apply every kernel layer this machine offers to this process (see this module's docstring).

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
