"""Architecture rules checked statically (no imports run): layering of fastadv.data, module size."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastadv"
MAX_MODULE_LINES = 400


def _module_name(path: Path, root: Path) -> str:
    """fastadv/data/loader.py -> fastadv.data.loader, relative to the folder `root` holding fastadv/."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path, known: set[str], root: Path) -> set[str]:
    """The modules among `known` that `path` imports anywhere (module level or inside functions).

    `from pkg import name` counts as importing pkg.name when that is a module, else pkg. The
    implicit import of a parent package by its submodules is not an edge (Python runs the
    package's __init__ first, whichever way the graph goes).
    """
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def _import_graph(folder: Path, root: Path = PACKAGE.parent) -> dict[str, set[str]]:
    """Module -> the modules under `folder` it imports."""
    paths = sorted(folder.rglob("*.py"))
    known = {_module_name(p, root) for p in paths}
    return {_module_name(p, root): _imported_modules(p, known, root) for p in paths}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_sees_a_cycle_and_a_function_level_import(tmp_path: Path) -> None:
    """The checker itself: a lazy (function-level) import that closes a circle is found."""
    pkg = tmp_path / "fastadv" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fastadv.data.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from fastadv.data import a\n")
    (pkg / "c.py").write_text("from fastadv.data.b import thing\n")
    (pkg / "d.py").write_text("from . import c\nfrom .c import thing\n")
    graph = _import_graph(pkg, tmp_path)
    assert graph == {"fastadv.data": set(), "fastadv.data.a": {"fastadv.data.b"}, "fastadv.data.b": {"fastadv.data.a"},
                     "fastadv.data.c": {"fastadv.data.b"}, "fastadv.data.d": {"fastadv.data.c"}}
    assert _find_cycle(graph) == ["fastadv.data.a", "fastadv.data.b", "fastadv.data.a"]
    graph["fastadv.data.b"] = set()
    assert _find_cycle(graph) is None


def test_data_package_has_no_import_cycle() -> None:
    graph = _import_graph(PACKAGE / "data")
    assert "fastadv.data.loader" in graph and graph["fastadv.data.dali"], "the graph was not built"
    assert _find_cycle(graph) is None, f"import cycle in fastadv.data: {' -> '.join(_find_cycle(graph))}"


def test_only_the_dispatcher_knows_every_backend() -> None:
    """Backends import the bottom modules only; no bottom module imports a backend or the dispatcher."""
    graph = _import_graph(PACKAGE / "data")
    backends = {f"fastadv.data.{m}" for m in ("folder", "demo", "dali", "ffcv_backend", "ffcv_write")}
    bottom = {f"fastadv.data.{m}" for m in ("batch", "sampler", "seeding", "subset", "threads", "files", "geometry",
                                             "class_folders")}
    dispatcher = "fastadv.data.loader"
    assert backends <= graph[dispatcher] | {"fastadv.data.ffcv_write"}  # ffcv_write: through ffcv_backend
    for module in bottom:
        assert not graph[module] & (backends | {dispatcher, "fastadv.data"}), (module, graph[module])
    for module in backends:
        assert not graph[module] - bottom - {"fastadv.data.ffcv_write"}, (module, graph[module])


def _module_lengths() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_is_over_400_lines() -> None:
    lengths = _module_lengths()
    assert len(lengths) > 20, "the package was not found"
    long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_data_package_keeps_its_public_names() -> None:
    import fastadv.data as data

    expected = {"Batch", "DigitsDataset", "EpochSampler", "FolderDataset", "Loader", "build_dataset",
                "build_demo_dataset", "build_folder_dataset", "build_loader", "collate", "limit_indices", "mix",
                "resolve_backend", "sample_seed", "split_root"}
    assert set(data.__all__) == expected and all(hasattr(data, name) for name in expected)
