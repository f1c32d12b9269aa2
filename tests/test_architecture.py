"""The architecture holds (ARCHITECTURE.md): imports go one way through the layers, with no
cycle, and importing lucijax changes no global state.

The import graph is read from the source with :mod:`ast`: every ``import`` and ``from ...
import`` of a lucijax module anywhere in a file (function-level imports included) is an
edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1] / "lucijax"

#: (layer, module prefixes); a module may import only modules of its own layer or above it.
LAYERS = [
    (0, ("lucijax.constants", "lucijax.status", "lucijax.config", "lucijax.diskcache")),
    (1, ("lucijax.physics",)),
    (2, ("lucijax.model", "lucijax.description")),
    (3, ("lucijax.io", "lucijax.mdn", "lucijax.program")),
    (4, ("lucijax.solvers", "lucijax.bayes")),
    (5, ("lucijax.engine",)),
    (6, ("lucijax.results",)),
    (7, ("lucijax.api", "lucijax.views", "lucijax.tools", "lucijax.plots", "lucijax.demo", "lucijax.simulate",
         "lucijax.nebular", "lucijax.viewer", "lucijax.survey", "lucijax.network_calibration")),
    (8, ("lucijax.cli",)),
]

#: Stricter rules inside the layers: module prefix -> prefixes it must never import.
FORBIDDEN = {
    # readers and views know physics only
    "lucijax.io": ("lucijax.model", "lucijax.description", "lucijax.mdn", "lucijax.program"),
    # the engine knows programs and cubes, never a solver, a sampler or a line model
    "lucijax.engine": ("lucijax.solvers", "lucijax.bayes", "lucijax.description", "lucijax.model", "lucijax.mdn"),
    # solvers do not know samplers
    "lucijax.solvers": ("lucijax.bayes",),
    # the networks know physics, not the fitters
    "lucijax.mdn": ("lucijax.io", "lucijax.program", "lucijax.description"),
}

#: The fit path never imports the simulator.
FIT_PATH = ("lucijax.physics", "lucijax.model", "lucijax.description", "lucijax.io", "lucijax.mdn",
            "lucijax.program", "lucijax.solvers", "lucijax.bayes", "lucijax.engine", "lucijax.results",
            "lucijax.api", "lucijax.views", "lucijax.tools")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The lucijax module an import names (``lucijax.io.open_cube`` -> ``lucijax.io``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            if n == "lucijax" or n.startswith("lucijax."):
                target = resolve(n)
                if target and target != module and target != "lucijax":
                    out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> int:
    best = None
    for number, prefixes in LAYERS:
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (number, len(p))
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md"
    return best[0]


def test_every_module_has_a_layer():
    for m in MODULES:
        if m != "lucijax":
            layer(m)


def test_imports_go_one_way():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in GRAPH.items() if m != "lucijax" for t in targets if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("prefix", sorted(FORBIDDEN))
def test_forbidden_imports(prefix):
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() if m == prefix or m.startswith(prefix + ".")
           for t in targets if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[prefix])]
    assert not bad, "\n".join(bad)


def test_the_fit_path_never_imports_the_simulator():
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() if m.startswith(FIT_PATH) for t in targets
           if t == "lucijax.simulate"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Depth-first search for a cycle in the module graph."""
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            elif state.get(t) is None:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m != "lucijax" and state.get(m) is None:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_every_public_name_is_importable_from_lucijax():
    import lucijax

    for name in lucijax.__all__:
        assert getattr(lucijax, name) is not None, name
    for mod in ("views", "io", "results", "bayes", "solvers", "engine"):
        assert getattr(lucijax, mod).__name__ == f"lucijax.{mod}"


_CHILD = """
import os, sys
import jax
before = bool(jax.config.jax_enable_x64)
import lucijax
assert not hasattr(lucijax, "jax"), "lucijax imported jax into its namespace"
import lucijax.api, lucijax.bayes, lucijax.cli  # the whole library
print(os.environ.get("XLA_FLAGS"))
print(before, bool(jax.config.jax_enable_x64), jax.config.jax_compilation_cache_dir)
"""


@pytest.mark.parametrize("flags", [None, "--xla_cpu_enable_fast_math=false"])
def test_importing_lucijax_changes_no_global_state(flags):
    """XLA_FLAGS stays what it was, float64 stays off (or on), no compilation cache is set."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    if flags is not None:
        env["XLA_FLAGS"] = flags
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == str(flags)
    assert lines[-1] == "False False None"
    env["JAX_ENABLE_X64"] = "1"
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True True None"


def test_importing_lucijax_imports_no_jax():
    code = "import sys, lucijax; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
