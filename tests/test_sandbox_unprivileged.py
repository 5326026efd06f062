"""The code sandbox for an ordinary user: the whole reward runs under an unprivileged uid, so no
drop to nobody helps; only the kernel's unprivileged layers (Landlock, seccomp, user and network
namespaces) stand between a program and that user's files, data, network and processes.

Run as root (as in CI), the test starts the reward's parent side in a child that becomes uid
65534 first. Where the interpreter sits under a folder other users cannot enter (/root/.pyenv),
that child first gets a private mount namespace in which those folders are reachable, as an
ordinary user's own Python would be. Run as an ordinary user, the scenarios run as that user.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

import r1lab
from r1lab.rewards.sandbox.child import landlock

UID = 65534
ABI = landlock.landlock_abi()
pytestmark = pytest.mark.skipif(ABI < 1, reason=f"this kernel has no Landlock (ABI {ABI}); see docs/sandbox.md")

# Becomes the unprivileged user (when root), then runs each scenario through the real reward.
HELPER = textwrap.dedent(
    r'''
    import ctypes, json, os, stat, sys, tempfile, warnings

    config = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result):
        if result != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    def reachable_for_everyone(paths):
        """In a private mount namespace, put a 0755 tmpfs over each folder other users cannot
        enter and bind the needed paths back into it: they stay where they are, and are reachable."""
        MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 0x1000, 0x4000, 1 << 18, 2
        blocked = {}
        for path in paths:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                ancestor = "/" + "/".join(parts[:i])
                if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                    blocked.setdefault(ancestor, []).append(path)
                    break
        if not blocked:
            return
        check(libc.unshare(0x00020000))  # CLONE_NEWNS
        check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
        for ancestor, inner in blocked.items():
            staged = []
            for path in inner:
                stage = tempfile.mkdtemp()
                check(libc.mount(path.encode(), stage.encode(), None, MS_BIND | MS_REC, None))
                staged.append((path, stage))
            check(libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", 0, b"mode=0755"))
            for path, stage in staged:
                os.makedirs(path, exist_ok=True)
                check(libc.mount(stage.encode(), path.encode(), None, MS_BIND | MS_REC, None))
                check(libc.umount2(stage.encode(), MNT_DETACH))
                os.rmdir(stage)

    if os.geteuid() == 0:
        reachable_for_everyone(config["paths"])
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    os.environ.update(HOME=config["home"], TMPDIR=config["home"])
    tempfile.tempdir = None

    if config.get("mask_kernel"):
        # A kernel without Landlock, seccomp filters or namespaces, as the sandbox will see it.
        sys.path.insert(0, config["child_dir"])
        import platform
        from child import landlock, libc, seccomp
        ENOSYS, EINVAL, EPERM = 38, 22, 1
        nr = {"x86_64": {"prctl": 157, "seccomp": 317, "unshare": 272},
              "aarch64": {"prctl": 167, "seccomp": 277, "unshare": 97}}[platform.machine()]
        libc.set_no_new_privs()
        seccomp.seccomp_install(seccomp.seccomp_program([
            (landlock.SYS_LANDLOCK_CREATE_RULESET, None, ENOSYS), (landlock.SYS_LANDLOCK_ADD_RULE, None, ENOSYS),
            (landlock.SYS_LANDLOCK_RESTRICT_SELF, None, ENOSYS), (nr["seccomp"], None, ENOSYS),
            (nr["prctl"], libc.PR_SET_SECCOMP, EINVAL), (nr["unshare"], None, EPERM),
        ]))

    from r1lab.rewards import code, sandbox

    report = {"euid": os.geteuid()}
    correct = "<answer> def f(x): return x*3+1 </answer>"
    reference = {"task": "code", "tests": config["tests"]}
    if config.get("mask_kernel"):
        try:
            report["refused"] = None
            code.code_reward("", correct, reference)
        except sandbox.SandboxUnavailable as error:
            report["refused"] = str(error)
        os.environ[sandbox.ALLOW_UNSAFE_ENV] = "1"
        sandbox.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report["opted_in_score"] = code.code_reward("", correct, reference)
        report["warnings"] = [str(w.message) for w in caught if issubclass(w.category, sandbox.SandboxWarning)]
    else:
        guards = code.sandbox_guards()
        report["layers"], report["missing"] = list(guards.layers), list(guards.missing)
        report["correct"] = code.code_reward("", correct, reference)
        blocked = (code._BLOCKED_OS, code._BLOCKED_MODULES, code.ALLOWED_IMPORTS)
        for name, (program, python_guards) in config["attacks"].items():
            if not python_guards:
                code._BLOCKED_OS, code._BLOCKED_MODULES = [], []
                code.ALLOWED_IMPORTS = (*blocked[2], "socket")
            result = code.run_sandboxed(program, config["tests"], timeout_s=2.0)
            code._BLOCKED_OS, code._BLOCKED_MODULES, code.ALLOWED_IMPORTS = blocked
            report[name] = [result.passed, result.status, result.detail]
        for name, program in config["allowed"].items():
            result = code.run_sandboxed(program, config["tests"], timeout_s=2.0)
            report[name] = [result.passed, result.status, result.detail]
        report["correct_after"] = code.code_reward("", correct, reference)
    print(json.dumps(report))
    '''
)

TESTS = [[[0], 1], [[1], 4], [[2], 7], [[5], 16]]


def attacks(home: str, victim: str, data: str, port: int, sleeper: int) -> dict[str, tuple[str, bool]]:
    """name -> (program, with the Python-level guards on)."""
    fn = "import os, io, json\ndef f(x):\n    {}\n    return x*3+1"
    return {
        # the bypasses of the Python-level file guard
        "os.open O_TRUNC": (fn.format(f"os.close(os.open({victim!r}, os.O_WRONLY | os.O_TRUNC))"), True),
        "io.FileIO w": (fn.format(f"io.FileIO({victim!r}, 'w').close()"), True),
        "os.mkdir outside": (fn.format(f"os.mkdir({home!r} + '/made')"), True),
        "create outside": (fn.format(f"os.close(os.open({home!r} + '/made', os.O_WRONLY | os.O_CREAT))"), True),
        # the training data with its answers, world-readable
        "read the data": (
            "import json\ndef f(x):\n"
            f"    rows = [json.loads(line) for line in open({data!r})]\n"
            "    return {row['x']: row['answer'] for row in rows}[x]",
            True,
        ),
        "read /etc/passwd": (fn.format("open('/etc/passwd').read()"), True),
        # the network and other processes, with the Python guards off: only the kernel's remain
        "tcp connect": (
            fn.format(f"s = __import__('socket').socket(); s.settimeout(1); s.connect(('127.0.0.1', {port}))"),
            False,
        ),
        "udp send": (
            fn.format("s = __import__('socket').socket(2, 2); s.sendto(b'x', ('127.0.0.1', 9))"),
            False,
        ),
        "kill a process of this uid": (fn.format(f"os.kill({sleeper}, 9)"), False),
        "chmod the victim": (fn.format(f"os.chmod({victim!r}, 0)"), False),
        "remove the victim": (fn.format(f"os.remove({victim!r})"), False),
        # the existing hostile cases, as this user
        "remove (guarded)": (fn.format(f"os.remove({victim!r})"), True),
        "open w (guarded)": (fn.format(f"open({victim!r}, 'w').close()"), True),
        "rmtree": (f"import shutil\nshutil.rmtree({home!r})\ndef f(x): return x*3+1", False),
        "fork bomb": ("import os\nwhile True:\n    os.fork()", False),
        "memory bomb": ("x = 'a' * 10**10\ndef f(x): return x*3+1", True),
        "infinite loop": ("while True:\n    pass", True),
    }


# What a program may do, in its throw-away directory: it must still score 1.
ALLOWED = {
    "scratch files": (
        "import os\n"
        "def f(x):\n"
        "    os.makedirs('d', exist_ok=True)\n"
        "    fd = os.open('d/scratch', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
        "    os.write(fd, str(x*3+1).encode())\n"
        "    os.close(fd)\n"
        "    value = int(open('d/scratch').read())\n"
        "    os.close(os.open('d/scratch', os.O_WRONLY | os.O_TRUNC))\n"
        "    return value if os.listdir('d') == ['scratch'] else None"
    ),
    "imports and randomness": (
        "import collections, json, math, random, re, os\n"
        "def f(x):\n"
        "    random.seed(os.urandom(8))\n"
        "    return json.loads(json.dumps(collections.Counter([x*3+1])))[str(x*3+1)] * (x*3+1)"
    ),
}


def run_helper(home: str, config: dict) -> dict:
    here = os.path.dirname
    config = {
        "uid": UID, "home": home, "tests": TESTS, "child_dir": here(here(landlock.__file__)),
        "paths": sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, here(here(r1lab.__file__)))}),
        **config,
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", HELPER, json.dumps(config)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture
def home():
    """A folder of the unprivileged user: theirs to write, so only the sandbox protects it."""
    folder = tempfile.mkdtemp(prefix="r1lab-user-")
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        os.chown(folder, UID, UID)
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


def as_user(path: str, text: str, mode: int) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, UID, UID)


def test_an_ordinary_users_programs_are_contained(home):
    victim, data = os.path.join(home, "victim.txt"), os.path.join(home, "train.jsonl")
    as_user(victim, "precious", 0o644)
    as_user(data, "".join(json.dumps({"x": x, "answer": y}) + "\n" for [x], y in TESTS), 0o644)
    before = os.stat(victim)
    user = {"user": UID, "group": UID} if os.geteuid() == 0 else {}
    sleeper = subprocess.Popen(["sleep", "60"], **user)
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            cases = attacks(home, victim, data, port, sleeper.pid)
            report = run_helper(home, {"attacks": cases, "allowed": ALLOWED})
            server.settimeout(0.2)
            with pytest.raises(TimeoutError):
                server.accept()  # nobody ever knocked
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()

    assert report["euid"] == (UID if os.geteuid() == 0 else os.geteuid())
    assert "nobody" not in report["layers"]  # the unprivileged path: no root to drop
    assert {"rlimits", "landlock-fs", "seccomp"} <= set(report["layers"]) and report["missing"] == []
    assert report["correct"] == report["correct_after"] == 1.0
    for name in ALLOWED:
        assert report[name] == [len(TESTS), "ok", ""], (name, report[name])
    for name in cases:
        passed, status, detail = report[name]
        assert passed == 0, (name, report[name])
        if name not in ("fork bomb", "memory bomb", "infinite loop", "rmtree"):
            assert "PermissionError" in detail, (name, report[name])
    assert report["fork bomb"][1:] == ["error", "BlockingIOError: [Errno 11] Resource temporarily unavailable"]
    assert report["infinite loop"][1] == "timeout"
    assert "PermissionError" in report["rmtree"][2]
    with open(victim) as f:
        assert f.read() == "precious"
    after = os.stat(victim)
    assert (after.st_mode, after.st_mtime_ns, after.st_ino) == (before.st_mode, before.st_mtime_ns, before.st_ino)
    assert sorted(os.listdir(home)) == ["train.jsonl", "victim.txt"]


def test_without_kernel_guards_code_rewards_refuse_unless_allowed(home):
    """The same user on a kernel with no Landlock, no seccomp filters and no namespaces."""
    report = run_helper(home, {"mask_kernel": True})
    refused = report["refused"]
    assert refused is not None and "cannot contain programs" in refused
    assert "NOT GUARANTEED: file contents" in refused and "NOT GUARANTEED: network" in refused
    assert "R1LAB_SANDBOX_ALLOW_UNSAFE=1" in refused
    assert report["opted_in_score"] == 1.0
    assert any("NOT confining" in w and "R1LAB_SANDBOX_ALLOW_UNSAFE" in w for w in report["warnings"])
