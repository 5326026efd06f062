"""Each kernel layer of the code sandbox on its own, in a fresh interpreter that applies only that
layer and then tries what it must stop; the seccomp filter's logic on an emulator; the policy on
missing layers; and the degraded and refused paths through run_sandboxed."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import warnings

import pytest

from r1lab.rewards import code, sandbox
from r1lab.rewards.sandbox.child import landlock, seccomp

TESTS = [[[0], 1], [[1], 4], [[2], 7], [[5], 16]]
ABI = landlock.landlock_abi()
# the folder that holds the child package, which a bare `python -I -S` imports as `child`
SANDBOX_DIR = os.path.dirname(os.path.dirname(landlock.__file__))
needs_landlock = pytest.mark.skipif(ABI < 1, reason=f"this kernel has no Landlock (ABI {ABI})")


def confined(layer: str, actions: dict[str, str], **params) -> dict[str, str]:
    """Apply one layer in a fresh `python -I -S`, then run each action (a Python statement);
    returns action name -> "ok" or the exception's type name."""
    script = textwrap.dedent(
        """
        import json, os, socket, sys
        sys.path.insert(0, {folder!r})
        from child import landlock, libc, seccomp
        params = json.loads({params!r})
        layer = {layer!r}
        libc.set_no_new_privs()
        if layer == "landlock":
            rules = [(path, landlock.fs_rights(7) & ~landlock.FS_EXECUTE) for path in params["writable"]]
            landlock.landlock_restrict_self(landlock.landlock_ruleset(rules, params["abi"]))
        elif layer == "seccomp":
            seccomp.seccomp_install(seccomp.SECCOMP_PROGRAM)
        results = {{}}
        for name, action in json.loads({actions!r}).items():
            try:
                exec(action, {{"os": os, "socket": socket, "params": params}})
                results[name] = "ok"
            except Exception as error:
                results[name] = type(error).__name__
        print(json.dumps(results))
        """
    ).format(
        folder=SANDBOX_DIR, params=json.dumps(params), layer=layer, actions=json.dumps(actions)
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def dirs():
    """An allowed folder and an outside one with a world-readable, world-writable file."""
    inside, outside = tempfile.mkdtemp(), tempfile.mkdtemp()
    for folder in (inside, outside):
        os.chmod(folder, 0o777)
    victim = os.path.join(outside, "victim")
    with open(victim, "w") as f:
        f.write("precious")
    os.chmod(victim, 0o666)
    yield inside, outside, victim
    subprocess.run(["rm", "-rf", inside, outside], check=False)


# --- Landlock ----------------------------------------------------------------------------------------


@needs_landlock
@pytest.mark.parametrize("abi", sorted({1, 3, min(ABI, landlock.KNOWN_LANDLOCK_ABI)}))
def test_landlock_allows_only_the_allowed_folder(dirs, abi):
    if abi > ABI:
        pytest.skip(f"this kernel has Landlock ABI {ABI} < {abi}")
    inside, outside, victim = dirs
    results = confined(
        "landlock",
        {
            "write inside": f"open({inside!r} + '/new', 'w').write('x')",
            "mkdir inside": f"os.mkdir({inside!r} + '/dir')",
            "read inside": f"open({inside!r} + '/new').read()",
            "read outside": f"open({victim!r}).read()",
            "list outside": f"os.listdir({outside!r})",
            "read /etc/passwd": "open('/etc/passwd').read()",
            "O_TRUNC outside": f"os.open({victim!r}, os.O_WRONLY | os.O_TRUNC)",
            "create outside": f"os.open({outside!r} + '/new', os.O_WRONLY | os.O_CREAT)",
            "mkdir outside": f"os.mkdir({outside!r} + '/dir')",
            "remove outside": f"os.remove({victim!r})",
            "rename out of it": f"os.rename({victim!r}, {inside!r} + '/moved')",
            "truncate outside": f"os.truncate({victim!r}, 0)",
        },
        writable=[inside],
        abi=abi,
    )
    allowed = {"write inside", "mkdir inside", "read inside"}
    if abi < 3:
        allowed.add("truncate outside")  # ABI < 3 cannot deny truncate(); the seccomp filter does
    assert {name for name, outcome in results.items() if outcome == "ok"} == allowed, results
    assert all(outcome == "PermissionError" for name, outcome in results.items() if name not in allowed)
    if abi >= 3:
        with open(victim) as f:
            assert f.read() == "precious"


@pytest.fixture
def server():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@needs_landlock
def test_landlock_denies_tcp_from_abi_4(dirs, server):
    if ABI < 4:
        pytest.skip(f"this kernel has Landlock ABI {ABI} < 4: no TCP rules")
    # a bare connect: create_connection's getaddrinfo reads /etc files, which Landlock denies too
    connect = f"s = socket.socket(); s.settimeout(2); s.connect(('127.0.0.1', {server})); s.close()"
    bind = "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close()"
    assert confined("landlock", {"connect": connect, "bind": bind}, writable=[dirs[0]], abi=4) == {
        "connect": "PermissionError", "bind": "PermissionError",
    }  # fmt: skip
    # ABI 3 knows no network rights: the same connect goes through (the other layers must stop it)
    assert confined("landlock", {"connect": connect}, writable=[dirs[0]], abi=3) == {"connect": "ok"}


@needs_landlock
def test_landlock_scopes_signals_and_abstract_sockets_from_abi_6(dirs):
    if ABI < 6:
        pytest.skip(f"this kernel has Landlock ABI {ABI} < 6: no scopes")
    sleeper = subprocess.Popen(["sleep", "30"])
    name = f"\0r1lab-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(name)
    listener.listen()
    try:
        actions = {
            "signal": f"os.kill({sleeper.pid}, 0)",
            "abstract socket": f"s = socket.socket(socket.AF_UNIX); s.connect({name!r})",
            "signal itself": "os.kill(os.getpid(), 0)",
        }
        assert confined("landlock", actions, writable=[dirs[0]], abi=6) == {
            "signal": "PermissionError", "abstract socket": "PermissionError", "signal itself": "ok",
        }  # fmt: skip
        assert confined("landlock", actions, writable=[dirs[0]], abi=5)["signal"] == "ok"
        assert sleeper.poll() is None
    finally:
        listener.close()
        sleeper.kill()
        sleeper.wait()


# --- seccomp -----------------------------------------------------------------------------------------


@pytest.mark.skipif(seccomp.SECCOMP_PROGRAM is None, reason=f"no syscall table for {platform.machine()}")
def test_seccomp_denies_what_landlock_does_not_cover(dirs, server):
    _, _, victim = dirs
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        results = confined(
            "seccomp",
            {
                "socket": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
                "unix socketpair": "socket.socketpair()",
                "signal": f"os.kill({sleeper.pid}, 9)",
                "chmod": f"os.chmod({victim!r}, 0)",
                "chown": f"os.chown({victim!r}, 0, 0)",
                "utime": f"os.utime({victim!r}, (0, 0))",
                "setxattr": f"os.setxattr({victim!r}, 'user.r1lab', b'x')",
                "truncate": f"os.truncate({victim!r}, 0)",
                "unshare": "os.unshare(0x40000000) if hasattr(os, 'unshare') else "
                "__import__('ctypes').CDLL(None, use_errno=True).unshare(0x40000000) == 0 or 1 / 0",
                "read": f"open({victim!r}).read()",
                "getpid": "os.getpid()",
            },
        )
        assert results.pop("read") == results.pop("getpid") == "ok"
        assert results.pop("unshare") != "ok"
        assert set(results.values()) == {"PermissionError"}, results
        assert sleeper.poll() is None
        assert os.stat(victim).st_mode & 0o777 == 0o666
        with open(victim) as f:
            assert f.read() == "precious"
    finally:
        sleeper.kill()
        sleeper.wait()


def run_bpf(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Classic BPF as the kernel runs a seccomp filter, for the instructions seccomp_program uses."""
    data = {0: nr, 4: arch, 16: arg0}
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = __import__("struct").unpack_from("=HBBI", program, 8 * pc)
        pc += 1
        if op == 0x20:
            acc = data[k]
        elif op == 0x15:
            pc += jt if acc == k else jf
        elif op == 0x35:
            pc += jt if acc >= k else jf
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF op {op:#x}")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_logic(machine):
    arch = seccomp.AUDIT_ARCH[machine]
    table = seccomp.DENIED_SYSCALLS[machine]
    program = seccomp.seccomp_program([(n, None, seccomp.EPERM) for n in table.values()], machine)
    eperm, allow, kill = 0x00050000 | seccomp.EPERM, 0x7FFF0000, 0x80000000
    for number in table.values():
        assert run_bpf(program, number, arch) == eperm
    for number in set(range(470)) - set(table.values()):
        assert run_bpf(program, number, arch) == allow
    assert run_bpf(program, 0, 0x40000003) == kill  # i386 (int 0x80)
    if machine == "x86_64":
        assert run_bpf(program, 0x40000000 | 41, arch) == kill  # x32 socket()
    # a rule on the first argument: prctl(PR_SET_SECCOMP, ...) only, and rules after it still apply
    rules = [(157, 22, 22), (41, None, 1)]
    program = seccomp.seccomp_program(rules, "x86_64")
    x86 = seccomp.AUDIT_ARCH["x86_64"]
    assert run_bpf(program, 157, x86, arg0=22) == 0x00050000 | 22
    assert run_bpf(program, 157, x86, arg0=38) == allow
    assert run_bpf(program, 41, x86) == eperm
    assert run_bpf(program, 42, x86) == allow


# --- the policy, and run_sandboxed on a weaker kernel --------------------------------------------------


def test_missing_guarantees():
    everything = ("rlimits", "netns", "landlock-fs", "landlock-net", "landlock-scope", "seccomp")
    assert sandbox.missing_guarantees(everything) == ()
    # Linux 5.13-6.6 (Landlock ABI 1-3), no user namespaces: seccomp covers network and signals
    assert sandbox.missing_guarantees(("rlimits", "landlock-fs", "seccomp")) == ()
    # no Landlock: nothing keeps a program from the training data, or from the user's files
    assert sandbox.missing_guarantees(("rlimits", "netns", "seccomp")) == (
        "file contents: writes only in the throw-away directory, reads only of it",
    )
    missing = sandbox.missing_guarantees(("rlimits", "landlock-fs", "netns"))
    assert len(missing) == 2 and any("signals" in m for m in missing) and any("metadata" in m for m in missing)
    assert len(sandbox.missing_guarantees(("rlimits",))) == 4


@pytest.fixture
def fresh_sandbox(monkeypatch):
    """A sandbox that probes the kernel anew, and forgets that probe afterwards."""
    monkeypatch.delenv(sandbox.ALLOW_UNSAFE_ENV, raising=False)
    sandbox.reset()
    yield
    sandbox.reset()


@needs_landlock
def test_older_landlock_warns_and_still_contains(monkeypatch, fresh_sandbox, dirs, server):
    """Landlock ABI 3 (Linux 6.2-6.6): no TCP or signal rules; the network namespace and seccomp
    still give those guarantees, so the sandbox runs and says what it lacks."""
    monkeypatch.setattr(code, "LANDLOCK_ABI_MAX", 3)
    with pytest.warns(sandbox.SandboxWarning, match="landlock-net"):
        found = code.sandbox_guards()
    assert "landlock-fs" in found.layers and "landlock-net" not in found.layers and found.missing == ()
    monkeypatch.setattr(code, "_BLOCKED_MODULES", [])
    monkeypatch.setattr(code, "ALLOWED_IMPORTS", (*code.ALLOWED_IMPORTS, "socket"))
    connect = (
        f"import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', {server}), timeout=1)\n    return x*3+1"
    )
    assert code.run_sandboxed(connect, TESTS).passed == 0
    _, _, victim = dirs
    assert code.run_sandboxed(f"def f(x):\n    return open({victim!r}).read()", [[[0], "precious"]]).passed == 0
    assert code.run_sandboxed("def f(x): return x*3+1", TESTS).passed == 4


def test_without_landlock_the_sandbox_refuses_unless_allowed(monkeypatch, fresh_sandbox):
    """A kernel without Landlock (here: the sandbox told to use none of it)."""
    monkeypatch.setattr(code, "LANDLOCK_ABI_MAX", 0)
    correct = "<answer> def f(x): return x*3+1 </answer>"
    with (
        pytest.warns(sandbox.SandboxWarning, match="NOT confining"),
        pytest.raises(sandbox.SandboxUnavailable, match=sandbox.ALLOW_UNSAFE_ENV) as refused,
    ):
        code.run_sandboxed("def f(x): return x*3+1", TESTS)
    assert "NOT GUARANTEED: file contents" in str(refused.value)
    with pytest.raises(sandbox.SandboxUnavailable):  # the reward does not hide it as a 0.0
        code.code_reward("", correct, {"tests": TESTS})
    monkeypatch.setenv(sandbox.ALLOW_UNSAFE_ENV, "1")
    sandbox.reset()
    with pytest.warns(sandbox.SandboxWarning, match="NOT confining"):
        assert code.code_reward("", correct, {"tests": TESTS}) == 1.0


@needs_landlock
def test_a_worker_that_cannot_apply_a_layer_the_probe_saw_refuses_to_run(monkeypatch, fresh_sandbox):
    assert "landlock-fs" in code.sandbox_guards().layers
    monkeypatch.setattr(code, "LANDLOCK_ABI_MAX", 0)  # from now on, the worker cannot apply it
    result = code.run_sandboxed("def f(x): return x*3+1", TESTS)
    assert (result.passed, result.status) == (0, "sandbox_error") and "landlock-fs" in result.detail


def test_this_machine_gives_every_guarantee(fresh_sandbox):
    """On a kernel with Landlock and seccomp (Linux >= 5.13, as in CI) nothing may be missing,
    and from Landlock ABI 6 on no layer either, so there is no warning at all."""
    if ABI < 1 or seccomp.SECCOMP_PROGRAM is None:
        pytest.skip(f"this kernel lacks Landlock (ABI {ABI}) or seccomp tables for {platform.machine()}")
    with warnings.catch_warnings():
        if ABI >= 6:
            warnings.simplefilter("error", sandbox.SandboxWarning)
        found = code.sandbox_guards()
    assert found.missing == ()
    assert {"rlimits", "landlock-fs", "seccomp"} <= set(found.layers)
    assert ("landlock-net" in found.layers) == (ABI >= 4)
    assert ("landlock-scope" in found.layers) == (ABI >= 6)
