"""The package's shape holds: no import cycles, and dependencies point one way (docs/design.md §2).

The import graph is read from the source (AST), every import counted: at module level, inside
functions (lazy imports are still dependencies) and under ``TYPE_CHECKING``. Each module belongs to
a layer; a layer may import only the layers listed for it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmcheck"

CORE = {"results", "registry", "settings", "declare", "context", "distill"}
# layer -> the layers it may import (its own included).
# Everyone may import the result records (llmcheck.results), the lowest layer.
ALLOWED = {
    "api": {"records", "api", "core"},
    "core": {"records", "core"},
    "stats": {"records", "stats"},
    "target": {"records", "core", "target"},
    "measuring": {"records", "core", "stats", "target", "measuring"},
    "isolation": {"records", "core", "stats", "target", "isolation"},
    "checks": {"records", "core", "stats", "target", "measuring", "isolation", "checks"},
    "ab": {"records", "core", "stats", "isolation", "ab"},
    "reports": {"reports", "stats", "records"},
    "records": {"records"},
    "plugins": {"core", "stats", "isolation", "ab", "reports", "records", "plugins", "target"},
    "cli": {"core", "stats", "ab", "reports", "records", "cli"},
    "entry": {"records", "checks", "isolation"},
}


def layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "api"
    if module in ("llmcheck.cli", "llmcheck.ab.cli"):
        return "cli"
    if module in ("llmcheck.ddp_rank", "llmcheck.isolation.__main__"):
        return "entry"
    if parts[0] in ("results", "registry"):
        return "records" if parts[0] == "results" else "core"
    if parts[0] in CORE:
        return "core"
    return parts[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (names for annotations, never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def imports(path: Path, root: Path, known: set[str], runtime_only: bool = False) -> set[str]:
    """The llmcheck modules ``path`` imports (``from a.b import c`` counts a.b.c when c is a module);
    with ``runtime_only``, without the imports under ``TYPE_CHECKING``."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == root.name}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root.name:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def graph(root: Path = PACKAGE, runtime_only: bool = False) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: imports(p, root, set(files), runtime_only) - {m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def wrong_way(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(g.items()):
        for d in sorted(deps):
            if layer(d) not in ALLOWED[layer(m)]:
                bad.append(f"{m} ({layer(m)}) imports {d} ({layer(d)})")
            elif layer(m) == layer(d) == "checks" and _check_package(m) != _check_package(d):
                bad.append(f"{m} imports another check's module {d}")
    return bad


def _check_package(module: str) -> str:
    return ".".join(module.split(".")[:3])


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []  # type-only imports included: a cycle there confuses editors too


def test_dependencies_point_one_way():
    # A type-only import (llmcheck.context naming the worker-side Target for editors) is no dependency.
    assert wrong_way(graph(runtime_only=True)) == []


def test_the_top_level_holds_few_modules_beside_the_subpackages():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(modules) <= 10, modules


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "llmcheck"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_planted_cycle_is_found_even_through_a_lazy_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "stats/__init__.py": "",
            "stats/a.py": "from llmcheck.stats import b\n",
            "stats/b.py": "def f():\n    from llmcheck.stats.a import x\n",
        },
    )
    assert cycles(graph(root)) == [["llmcheck.stats.a", "llmcheck.stats.b"]]


def test_a_planted_wrong_way_import_is_named(tmp_path):
    root = _plant(
        tmp_path,
        {
            "reports/__init__.py": "",
            "reports/page.py": "def render():\n    from llmcheck.target.model import T\n",
            "target/__init__.py": "",
            "target/model.py": "",
            "checks/__init__.py": "",
            "checks/one.py": "from llmcheck.checks import two\n",
            "checks/two.py": "",
        },
    )
    assert wrong_way(graph(root)) == [
        "llmcheck.checks.one imports another check's module llmcheck.checks.two",
        "llmcheck.reports.page (reports) imports llmcheck.target.model (target)",
    ]


def test_subpackage_inits_hold_at_most_a_docstring():
    """An ``__init__`` that imported its modules would pull torch into the pytest process."""
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    loaded = [p for p in inits if any(not isinstance(n, ast.Expr) for n in ast.parse(p.read_text()).body)]
    assert [str(p.relative_to(PACKAGE)) for p in loaded] == []


def test_the_pytest_process_side_imports_no_torch():
    code = (
        "import sys, llmcheck, llmcheck.plugins.pytest_plugin, llmcheck.cli\n"
        "from llmcheck.registry import load_checks\n"
        "load_checks()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('llmcheck'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
