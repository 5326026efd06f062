"""The house's shape: imports run one way (data → math → models/generation → modules → jobs/pipeline),
no import cycles, one sampling loop, and files small enough to read in one sitting."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "r1lab"

# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    ("base", ["r1lab.tensors", "r1lab.checks"]),
    ("data", ["r1lab.data"]),
    ("math", ["r1lab.rl", "r1lab.kd", "r1lab.rm.losses", "r1lab.rewards"]),
    ("models", ["r1lab.models", "r1lab.generation", "r1lab.rm", "r1lab.evaluation"]),
    ("modules", ["r1lab.modules", "r1lab.callbacks", "r1lab.strategies"]),
    ("jobs", ["r1lab.jobs", "r1lab.train", "r1lab.pipeline", "r1lab.report", "r1lab.compare", "r1lab.export",
              "r1lab.bench", "r1lab.rm.likelihood"]),
]


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (``r1lab.rm.losses`` is math, ``r1lab.rm.model`` models)."""
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    if index is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")
    return index


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, top_level_only: bool = False) -> set[str]:
    """The r1lab modules ``path`` imports (``from r1lab.x import y`` counts as r1lab.x, or r1lab.x.y
    when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    known = modules()
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1lab"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("r1lab")}
    found.discard(name)
    return found


def test_imports_run_down_the_layers():
    wrong = []
    for name, path in sorted(modules().items()):
        if name == "r1lab":
            continue
        for target in imports(path, name):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    known = modules()
    graph = {name: {t for t in imports(path, name, top_level_only=True) if t in known}
             for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_layer_rule_can_fail():
    """The check above would see an upward import: the math layer importing a module."""
    assert layer_of("r1lab.rl.losses") < layer_of("r1lab.modules.grpo")
    assert layer_of("r1lab.rm.losses") < layer_of("r1lab.rm.model") < layer_of("r1lab.jobs.rm_score")


def test_one_sampling_loop():
    """Only the generation package draws tokens: every other module samples through a rollout engine."""
    offenders = []
    for name, path in modules().items():
        if name.startswith(("r1lab.generation", "r1lab.bench")):
            continue  # the bench times the bare sampling loop on purpose
        text = path.read_text()
        for needle in ("torch.multinomial", "sample_categorical(", "generation.sampling import", "import sample\n",
                       "1_000_003", "7919"):
            if needle in text:
                offenders.append(f"{name}: {needle.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize("folder", ["src", "tests"])
def test_files_stay_small(folder):
    root = SRC.parents[1] / folder
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
