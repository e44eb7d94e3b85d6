"""The layering stays true: imports only point down, no circles, no imports by name at run time.

Layers, bottom to top: ``schemas`` (contracts) <- ``model`` <- ``streams`` (the
worker) <- ``interest`` (commands and jobs) <- ``testkit`` <- ``bench``; and
``tests`` is imported by nobody.  Read from the source with ``ast``, every
import counts, also those inside functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["schemas", "model", "streams", "interest", "testkit", "bench"]
# (importer, what it must not import): a store backend never imports another, nor the factory that picks one.
APART = [("streams.stores.sqlite", "streams.stores.cassandra"), ("streams.stores.cassandra", "streams.stores.sqlite"),
         ("streams.stores.sqlite", "streams.stores.factory"), ("streams.stores.cassandra", "streams.stores.factory")]
DYNAMIC = {"__import__", "import_module"}


@dataclass(frozen=True)
class Problem:
    kind: str
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where} -> {self.what}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """Modules ``module`` imports; ``from pkg import sub`` names ``pkg.sub`` alone when that is a module."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join(stem + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            yield from subs or [target]


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only: no arrow at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def dynamic_calls(tree: ast.AST) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in DYNAMIC:
                yield node.lineno


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def check_tree(root: Path) -> list[Problem]:
    """Every broken rule under ``root`` (a checkout, or a small tree a test builds)."""
    files = {module_name(root, p): p for top in LAYERS if (root / top).is_dir() for p in (root / top).rglob("*.py")}
    problems: list[Problem] = []
    graph: dict[str, set[str]] = {}
    for module, path in sorted(files.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set(imports_of(tree, module, path.name == "__init__.py", set(files)))
        graph[module] = {t for t in targets if t in files and t != module}
        for lineno in dynamic_calls(tree):
            problems.append(Problem("dynamic import", f"{module}:{lineno}", "import by name at run time"))
        here = layer_of(module)
        for target in sorted(targets):
            if target.split(".")[0] == "tests":
                problems.append(Problem("imports tests", module, target))
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                problems.append(Problem("upward import", module, target))
            for a, b in APART:
                if (module == a or module.startswith(a + "_")) and (target == b or target.startswith(b)):
                    problems.append(Problem("backends import each other", module, target))
    problems.extend(Problem("import circle", " -> ".join(c), c[0]) for c in circles(graph))
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            comp = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                comp.append(top)
                if top == node:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checkout_keeps_its_layers() -> None:
    problems = check_tree(ROOT)
    assert not problems, "\n".join(str(p) for p in problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"model/__init__.py": "", "model/a.py": "def f():\n    from streams.app import x\n",
          "streams/__init__.py": "", "streams/app.py": ""}, "upward import"),
        ({"model/__init__.py": "", "model/a.py": "from model import b\n", "model/b.py": "import model.a\n"},
         "import circle"),
        ({"interest/__init__.py": "", "interest/cli.py": "import importlib\nimportlib.import_module('interest.x')\n"},
         "dynamic import"),
        ({"interest/__init__.py": "", "interest/cli.py": "m = __import__('interest.x', fromlist=['r'])\n"},
         "dynamic import"),
        ({"bench/__init__.py": "", "bench/a.py": "from tests.helpers import x\n"}, "imports tests"),
        ({"streams/__init__.py": "", "streams/stores/__init__.py": "", "streams/stores/cassandra.py": "",
          "streams/stores/sqlite.py": "from .cassandra import top_k\n"}, "backends import each other"),
    ],
)
def test_the_checker_catches_each_broken_rule(tmp_path: Path, files: dict[str, str], kind: str) -> None:
    problems = check_tree(_write(tmp_path, files))
    assert kind in {p.kind for p in problems}, problems


def test_a_clean_tree_passes_the_checker(tmp_path: Path) -> None:
    files = {"schemas/__init__.py": "", "schemas/e.py": "", "model/__init__.py": "",
             "model/a.py": "from schemas.e import E\n", "streams/__init__.py": "", "streams/w.py": "import model.a\n"}
    assert check_tree(_write(tmp_path, files)) == []
