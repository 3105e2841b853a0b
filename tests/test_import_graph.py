"""The package's rooms import only downward along the data path, and no module takes part
in an import cycle. Every import counts, the ones inside functions too: a function-level
import that closes a circle only moves the failure to run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "bimaco_deploy"

#: Each room's place along the data path. A room may import rooms of a lower rank and
#: itself, never a room of the same or a higher rank (check and bench are siblings).
RANKS = {
    "errors": 0, "progress": 0,
    "reports": 0.5,  # the output rule raises errors.OutputError; below everything else
    "plugins": 1,  # the op contract and native kernels: the foundation everything follows
    "models": 2,
    "export": 3,
    "backends": 4,
    "pipeline": 5,
    "check": 6, "bench": 6,
    "serving": 6,  # Triton: model repository, Python-backend stages, the bundled server, the client
    "doctor": 7,
    "cli": 8, "demo": 8,
    "runtime": 9,  # re-exports of moved entry points, for users only
}


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Set[str]:
    """Every bimaco_deploy module ``name`` imports, anywhere in its body."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when one exists
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import bimaco_deploy.x.attr` -> the module part
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found


def _ancestors(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {}
    for name in MODULES:
        own = set(_ancestors(name))
        edges = set()
        for target in _imports(name):
            # importing a.b.c runs a.b/__init__ first, unless it is our own parent (already importing)
            edges |= {t for t in [*_ancestors(target), target] if t not in own and t != name}
        graph[name] = edges
    return graph


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_room_with_a_rank():
    rooms = {_room(m) for m in MODULES if _room(m)}
    assert rooms <= set(RANKS), f"new rooms need a rank here: {sorted(rooms - set(RANKS))}"


def test_rooms_import_only_downward_along_the_data_path():
    graph = _graph()
    bad = []
    for name, targets in graph.items():
        src = _room(name)
        for t in targets:
            dst = _room(t)
            if not src or not dst or dst == src:
                continue
            if RANKS[dst] >= RANKS[src]:
                bad.append(f"{name} -> {t}")
    assert not bad, "imports against the data path:\n" + "\n".join(sorted(bad))


def test_no_module_takes_part_in_an_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components: any component of two or more is a cycle
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_level_imports():
    # the graph must include imports made inside functions (doctor imports plugins.native there)
    assert "bimaco_deploy.plugins.native" in _imports("bimaco_deploy.doctor")


def test_every_module_imports_on_its_own_in_reverse_order():
    # one fresh interpreter, modules in reverse sorted order: a hidden order dependence shows here
    names = [n for n in sorted(MODULES, reverse=True) if not n.endswith("__main__")]
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\n" % (names,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
