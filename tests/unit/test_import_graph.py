"""No import cycles between ocirt's modules, and the library never imports the CLI.

The graph is read from the source with ast, every import counted wherever it sits (a function-level
import that closes a loop is still a loop: cli.py and cli_control.py once imported each other so).
Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_files(root: Path = REPO) -> dict[str, Path]:
    modules = {}
    for path in sorted((root / "ocirt").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node except what sits under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        graph[name].add(target)
                    elif base in modules:
                        graph[name].add(base)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# Cycles that exist and have an owner to undo them; each must go (the test fails once it is gone, so the
# entry goes with it). None are left: ocirt.cgroups.systemd now takes Manager from ocirt.cgroups.manager
# and the mount table from ocirt.cgroups.hierarchy, neither of which imports the package.
KNOWN_CYCLES: list[list[str]] = []


def test_no_module_of_ocirt_is_in_an_import_cycle():
    assert cycles(import_graph(module_files())) == KNOWN_CYCLES


def test_the_library_never_imports_the_cli():
    graph = import_graph(module_files())
    offenders = {name: sorted(t for t in targets if t == "ocirt.cli" or t.startswith("ocirt.cli."))
                 for name, targets in graph.items() if not (name == "ocirt.cli" or name.startswith("ocirt.cli."))}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_the_cli_groups_do_not_import_the_dispatcher():
    """`ocirt.cli` imports the command groups when it dispatches; they must not import it back (the
    table's readers, manual.py aside, are handed what they render)."""
    graph = import_graph(module_files())
    back = sorted(name for name, targets in graph.items()
                  if name.startswith("ocirt.cli.") and name != "ocirt.cli.manual" and "ocirt.cli" in targets)
    assert back == []


def test_the_checker_sees_a_cycle_through_function_level_imports(tmp_path):
    package = tmp_path / "ocirt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ocirt import b\n")
    (package / "b.py").write_text("from . import a\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n    import ocirt.c\n")
    (package / "c.py").write_text("import ocirt.b\n")
    assert cycles(import_graph(module_files(tmp_path))) == [["ocirt.a", "ocirt.b"]]
