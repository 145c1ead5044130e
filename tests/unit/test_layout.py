"""The house rules of kaft/'s layout, read from the source: imports point down (no cycle inside kaft/, nothing in
kaft/ imports analysis/, perf/ or tests/, only the testbed imports kaft.testbed), no file over 450 lines and no
function over 60. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "kaft"
MAX_FILE, MAX_FUNCTION = 450, 60


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` is ``a.b.c`` when that is a module of kaft)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_layout_check_sees_the_package():
    assert {"kaft.run", "kaft.job", "kaft.detection", "kaft.losses.base", "kaft.testbed.plugin"} <= set(MODULES)
    assert "kaft.stages" in GRAPH["kaft.job"] and "kaft.detection" in GRAPH["kaft.stages"]


def test_no_import_cycle_inside_kaft():
    assert _cycles() == []


@pytest.mark.parametrize("forbidden", ["analysis", "perf", "tests", "conftest", "helpers"])
def test_kaft_never_imports_what_sits_above_it(forbidden):
    bad = {
        m: sorted(i for i in _imports(p) if i == forbidden or i.startswith(forbidden + ".")) for m, p in MODULES.items()
    }
    assert {m: i for m, i in bad.items() if i} == {}


def test_only_the_testbed_imports_the_testbed():
    bad = {
        m: sorted(i for i in GRAPH[m] if i.startswith("kaft.testbed"))
        for m in MODULES
        if not m.startswith("kaft.testbed")
    }
    assert {m: i for m, i in bad.items() if i} == {}


def test_files_and_functions_a_reader_can_hold():
    long_files = {m: n for m, p in MODULES.items() if (n := p.read_text().count("\n")) > MAX_FILE}
    long_functions = {}
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    long_functions[f"{m}.{node.name}"] = n
    assert long_files == {} and long_functions == {}
