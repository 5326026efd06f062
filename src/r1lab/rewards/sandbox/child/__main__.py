"""A zygote's entry point: ``python -I -S .../sandbox/child/__main__.py PRELOAD_JSON`` (pool.py).

-I keeps the environment, the user's site and this file's own folder off sys.path and -S keeps
site-packages off it, so only the standard library is importable here, not r1lab. The modules of
this package use nothing else and import each other relatively, so they work as well under the
top-level name ``child`` as under r1lab.rewards.sandbox.child. This file imports the package from
the folder that holds it: that folder is appended to sys.path (after the standard library, so none
of its files can shadow a standard module) for the import only, and removed again before the
zygote preloads anything, so programs see the same sys.path as a bare ``python -I -S``.
"""

import json
import os
import sys

if __name__ == "__main__":
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.append(folder)
    try:
        from child.zygote import serve
    finally:
        sys.path.remove(folder)
    serve(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])
