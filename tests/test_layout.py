"""The code's shape: no import cycles, the core never imports up, files short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ddclip_core", "ddclip_ros", "training", "ddclip_cli")
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (never run, so never a cycle)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function (both can cycle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module, else pkg itself
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, nxt]))
                elif nxt not in path and len(path) < 10:
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


def test_the_core_imports_nothing_above_it():
    upward = {
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if name.startswith("ddclip_core")
        for target in targets
        if not target.startswith("ddclip_core")
    }
    assert not upward, sorted(upward)
    graph = _graph()
    ros = {f"{n} imports {t}" for n, ts in graph.items() if n.startswith("training") for t in ts if "ddclip_ros" in t}
    assert not ros, sorted(ros)


def test_files_stay_short_enough_to_read():
    long = [
        f"{path.relative_to(ROOT)}: {count} lines"
        for path in sorted(ROOT.glob("*/**/*.py"))
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)  # .venv, .gpu: not ours
        and (count := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, long


def test_every_exported_name_resolves_through_the_lazy_packages():
    import ddclip_core
    import ddclip_core.perception

    for package in (ddclip_core, ddclip_core.perception):
        assert sorted(package.__all__) == sorted(package._MODULE_OF)  # the three lists kept in step
        for name in package.__all__:
            value = getattr(package, name)
            assert getattr(value, "__name__", name) == name and name in dir(package)


def test_submodules_are_attributes_of_the_lazy_package_as_of_an_eager_one():
    import subprocess
    import sys

    probe = "import ddclip_core\nprint(ddclip_core.memory_store.__name__, hasattr(ddclip_core, 'no_such_module'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["ddclip_core.memory_store", "False"], result.stderr
