"""The design's one-way data flow, read from the imports of every module in ``sc_fm/``.

Every import counts, also those inside functions (lazy imports are still dependencies);
only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sc_fm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _runtime_nodes(tree: ast.AST):
    """Every node that runs, i.e. all but the body of an ``if TYPE_CHECKING:`` block."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and child in node.body:
                continue
            todo.append(child)


def imports_of(name: str) -> set[str]:
    """The ``sc_fm`` modules that ``name`` imports (a ``from pkg import sub`` names ``pkg.sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sc_fm"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if not base.startswith("sc_fm"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("importer, forbidden", [
    ("sc_fm.model", ("sc_fm.store", "sc_fm.vocab", "sc_fm.tokenize", "sc_fm.data", "sc_fm.train",
                     "sc_fm.commands", "sc_fm.pretrained", "sc_fm.evaluate", "sc_fm.finetune", "sc_fm.tracking",
                     "sc_fm.cli")),
    ("sc_fm.evaluate", ("sc_fm.train", "sc_fm.commands", "sc_fm.cli")),
    ("sc_fm.finetune", ("sc_fm.train", "sc_fm.evaluate", "sc_fm.commands", "sc_fm.cli")),
    ("sc_fm.pretrained", ("sc_fm.train", "sc_fm.evaluate", "sc_fm.finetune", "sc_fm.commands", "sc_fm.cli",
                          "sc_fm.data")),
    ("sc_fm.train", ("sc_fm.evaluate", "sc_fm.finetune", "sc_fm.commands", "sc_fm.cli")),
    ("sc_fm.tokenize", ("sc_fm.model", "sc_fm.train", "sc_fm.pretrained", "sc_fm.evaluate", "sc_fm.commands")),
    ("sc_fm.explain", ("sc_fm.train", "sc_fm.finetune", "sc_fm.data", "sc_fm.commands", "sc_fm.cli")),
])
def test_data_flows_one_way(importer, forbidden):
    broken = sorted(f"{name} imports {dep}" for name, deps in GRAPH.items() if _under(name, importer)
                    for dep in deps if _under(dep, *forbidden))
    assert not broken, broken


def test_the_thread_policy_sits_below_everything():
    """Every verb and the engine use it, and ``sc_fm`` imports it first: it pulls none of them in."""
    assert GRAPH["sc_fm.threads"] == {"sc_fm.errors"}


def test_no_import_cycle_anywhere():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


def test_the_graph_is_read_at_all():
    """The rules above would pass on an empty graph: check it holds known edges."""
    assert "sc_fm.model" in GRAPH["sc_fm.pretrained.bundle"] and "sc_fm.model.io" in GRAPH["sc_fm.pretrained.bundle"]
    assert "sc_fm.pretrained" in GRAPH["sc_fm.train.loop"]
    assert "sc_fm.evaluate" in GRAPH["sc_fm.commands.pretrain"]  # a lazy import inside run()


def test_type_checking_imports_do_not_count_as_runtime_imports():
    tree = ast.parse("from typing import TYPE_CHECKING\nimport sc_fm.model\nif TYPE_CHECKING:\n"
                     "    import sc_fm.train\nelse:\n    import sc_fm.data\n")
    names = {a.name for node in _runtime_nodes(tree) if isinstance(node, ast.Import) for a in node.names}
    assert names == {"sc_fm.model", "sc_fm.data"}
