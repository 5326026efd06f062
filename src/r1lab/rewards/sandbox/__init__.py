"""The code sandbox: runs an untrusted program in a confined, freshly forked process.

The child package is what runs in the sandbox (kernel layers, zygote, worker), in an interpreter
of its own; pool.py is the parent side (a pool of zygotes, the probe of the kernel's guards and
the policy on what is missing), which this module only re-exports.
r1lab.rewards.code builds the jobs and scores them; docs/sandbox.md describes the whole.
"""

from r1lab.rewards.sandbox.pool import (
    ALLOW_UNSAFE_ENV,
    GUARANTEES,
    WORKERS_ENV,
    Guards,
    SandboxUnavailable,
    SandboxWarning,
    missing_guarantees,
    reset,
    zygote_pids,
)

__all__ = [
    "ALLOW_UNSAFE_ENV",
    "GUARANTEES",
    "WORKERS_ENV",
    "Guards",
    "SandboxUnavailable",
    "SandboxWarning",
    "missing_guarantees",
    "reset",
    "zygote_pids",
]
