"""The child side of the code sandbox: kernel confinement, the zygote and the worker harness.

These modules run in their own interpreter, started as ``python -I -S child/__main__.py
PRELOAD_JSON`` (no site-packages, no environment, no user paths), where r1lab is not importable;
so they import nothing but the standard library and each other, relatively, which works both
there (as the top-level package ``child``, see __main__.py) and in r1lab, which imports them as
r1lab.rewards.sandbox.child for their constants and for tests of each kernel layer.

  * libc.py: the few libc calls (prctl, unshare) and no_new_privs;
  * landlock.py: the Landlock ruleset (files, TCP, signal and socket scopes);
  * seccomp.py: the syscall filter and the table of denied syscalls;
  * confine.py: every kernel layer in order: resource limits, network namespace, drop to nobody,
    Landlock, seccomp;
  * worker.py: one program in a fresh fork: confine, Python guards, run the tests, answer;
  * zygote.py: the zygote's loop: read a job, fork a worker, wait, send back its answer.

The zygote imports every module a program may use once, then serves jobs read from its stdin: for
each job it forks a worker, which confines itself and runs one program, and answers on its stdout.
The zygote itself never runs program code, so every program starts from the same clean state and
no two programs ever share a process.

The worker sends back the JSON text of what the entry function returned for each test's arguments;
it never sees the expected values, which the parent compares. A program that takes over its own
process (it can) can therefore only claim return values, which is what solving the task means.
"""
