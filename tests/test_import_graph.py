"""No import circles in fastadv/ or bench/, deferred (function-level) imports included.

The graph is read with `ast`, nothing is imported. Its rules:
- every `import a.b` and `from a.b import c` anywhere in a file counts: module level, inside a
  function, under `if TYPE_CHECKING:` or in a try block;
- relative imports are resolved against the file's package;
- `from pkg import name` is an edge to the submodule pkg.name when that file exists, else to
  pkg (its __init__);
- the implicit run of a parent package's __init__ before its submodule is not an edge (Python
  runs it first whichever way the graph goes). A package __init__ that imports its own
  submodules (re-exports) has ordinary edges to them, so a submodule that imports from its own
  package's __init__ (`from fastadv.config import Config` inside fastadv/config/) closes a
  circle and is reported: submodules import their siblings directly.
Each strongly connected component of the graph is one circle; the test names one path around each.
"""

from __future__ import annotations

from pathlib import Path

from test_architecture import _imported_modules, _module_name  # one import reader for both rules

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("fastadv", "bench")


def import_graph(root: Path = ROOT, folders: tuple[str, ...] = FOLDERS) -> dict[str, set[str]]:
    paths = [p for folder in folders if (root / folder).is_dir() for p in sorted((root / folder).rglob("*.py"))]
    known = {_module_name(p, root) for p in paths}
    return {_module_name(p, root): _imported_modules(p, known, root) for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path [a, b, ..., a] around each strongly connected component of more than one module."""
    return [_path_around(c, graph) for c in components(graph)]


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _path_around(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first module, staying inside the component."""
    inside, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & inside):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle through {start} in {component}")


def test_graph_reader_sees_deferred_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "fastadv" / "config"
    pkg.mkdir(parents=True)
    (tmp_path / "fastadv" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from fastadv.config.schema import Config\n")
    (pkg / "schema.py").write_text("def load():\n    from .validation import validate\n")
    (pkg / "validation.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from fastadv.config import Config\n")
    (tmp_path / "fastadv" / "cli.py").write_text("from fastadv import config\nimport fastadv.config.schema as s\n")
    graph = import_graph(tmp_path, ("fastadv",))
    assert graph == {"fastadv": set(), "fastadv.cli": {"fastadv.config", "fastadv.config.schema"},
                     "fastadv.config": {"fastadv.config.schema"}, "fastadv.config.schema": {"fastadv.config.validation"},
                     "fastadv.config.validation": {"fastadv.config"}}
    assert circles(graph) == [["fastadv.config", "fastadv.config.schema", "fastadv.config.validation", "fastadv.config"]]
    graph["fastadv.config.validation"] = set()
    assert circles(graph) == []


def test_circles_finds_each_component() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"e"}, "e": {"f"}, "f": {"d", "a"}}
    assert circles(graph) == [["a", "b", "a"], ["d", "e", "f", "d"]]


def test_no_import_circles() -> None:
    graph = import_graph()
    assert "fastadv.cli" in graph and "bench.run" in graph and graph["fastadv.cli"], "the graph was not built"
    found = components(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(
        f"{' -> '.join(_path_around(c, graph))}  ({len(c)} modules in this circle: {', '.join(c)})" for c in found)
