"""The import rules of ARCHITECTURE.md, checked on every import statement of the packages
(top-level and inside functions alike), and on what those imports import in turn: a
module may not reach a forbidden package through another of ours either."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("core", "model", "serving", "pipelines")

# package (or module prefix) -> the packages of ours it must never import
FORBIDDEN = {
    "core": ("model", "serving", "pipelines"),
    "model": ("serving", "pipelines"),
    "serving": ("model", "pipelines"),
    "pipelines.encode": ("model", "pipelines.train", "pipelines.tune"),
    # the source layer the encoder shares with training and tuning
    "pipelines.sources": ("model", "pipelines.train", "pipelines.tune"),
}


def imports_of(path: Path, root: Path = ROOT, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in a file; relative imports are resolved.
    `runtime_only` leaves out the imports of `if TYPE_CHECKING:` blocks (annotations only)."""
    tree = ast.parse(path.read_text(), str(path))
    if runtime_only:
        for node in ast.walk(tree):
            for field in ("body", "orelse"):
                block = getattr(node, field, None)
                if isinstance(block, list):
                    block[:] = [n for n in block if not (isinstance(n, ast.If) and isinstance(n.test, ast.Name)
                                                         and n.test.id == "TYPE_CHECKING")]
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]).strip(".")
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of ours by its dotted name (a package by its `__init__.py`)."""
    return {module_name(path, root): path for top in OURS for path in sorted((root / top).rglob("*.py"))}


def lazy_exports(path: Path) -> dict[str, str]:
    """A package's names loaded on first use (`_WHERE = {"name": "module"}`, `core.lazy`)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_WHERE" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph(root: Path = ROOT, runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports: the module an imported name names, every
    package on its way (importing `a.b.c` runs `a` and `a.b`), and for `from pkg import name`
    of a lazily exported name, the module that defines it."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        edges = set()
        for _, imported in imports_of(path, root, runtime_only):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in files:
                    edges.add(prefix)
                elif ".".join(parts[:end - 1]) in files:  # a name defined in the module before it
                    owner = lazy_exports(files[".".join(parts[:end - 1])]).get(parts[end - 1])
                    if owner in files:
                        edges.add(owner)
        graph[name] = edges - {name}
    return graph


def reach(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` imports, directly or through others: module -> the chain."""
    chains, queue = {start: [start]}, [start]
    while queue:
        current = queue.pop(0)
        for nxt in sorted(graph.get(current, ())):
            if nxt not in chains:
                chains[nxt] = [*chains[current], nxt]
                queue.append(nxt)
    return chains


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for top in OURS:
        for path in sorted((root / top).rglob("*.py")):
            name = module_name(path, root)
            rules = [bad for owner, banned in FORBIDDEN.items() if is_within(name, owner) for bad in banned]
            for line, imported in imports_of(path, root):
                for banned in rules:
                    if is_within(imported, banned):
                        found.append(f"{path.relative_to(root)}:{line} imports {imported}")
    return found


def indirect_violations(root: Path = ROOT) -> list[str]:
    """Forbidden packages a module reaches through the modules of ours it imports."""
    graph, found = import_graph(root), []
    for name in sorted(graph):
        rules = [bad for owner, banned in FORBIDDEN.items() if is_within(name, owner) for bad in banned]
        chains = reach(graph, name)
        for banned in rules:  # the shortest way to each forbidden package
            reached = [chain for module, chain in chains.items() if len(chain) > 2 and is_within(module, banned)]
            if reached:
                found.append(" -> ".join(min(reached, key=len)))
    return found


def cycles(package: str, root: Path = ROOT) -> list[list[str]]:
    """The import circles among a package's modules (top-level and function-level imports
    alike; `if TYPE_CHECKING:` blocks left out), each as the chain back to its start."""
    graph = {name: {m for m in edges if is_within(m, package) and m != package}
             for name, edges in import_graph(root, runtime_only=True).items() if is_within(name, package)}
    found = []
    for start in sorted(graph):
        back = [chain for module, chain in reach(graph, start).items() if start in graph.get(module, ())]
        if back and min(back, key=len)[1:]:
            circle = [*min(back, key=len), start]
            if min(circle[:-1]) == start:  # each circle once, from its first module
                found.append(circle)
    return found


def test_the_model_package_has_no_import_circle():
    assert cycles("model") == []


def test_the_circle_check_finds_a_circle_through_a_function_level_import(tmp_path):
    files = {"model/__init__.py": "", "model/a.py": "from model import b\n",
             "model/b.py": "def later():\n    from model.c import x\n", "model/c.py": "import model.a\n",
             "model/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from model import a\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for top in ("core", "serving", "pipelines"):
        (tmp_path / top).mkdir()
    assert cycles("model", tmp_path) == [["model.a", "model.b", "model.c", "model.a"]]


def test_the_packages_keep_the_import_rules():
    assert violations() == []


def test_no_package_reaches_a_forbidden_one_through_another_module():
    assert indirect_violations() == []


def test_the_indirect_check_catches_an_import_through_another_module_and_a_lazy_export(tmp_path):
    """The checker itself, on a tiny package tree: the source layer importing a module of
    ours that imports `model/` (directly, or through a lazily exported name) is reported,
    though none of its own imports is forbidden."""
    files = {
        "model/__init__.py": "",
        "model/vae.py": "",
        "core/__init__.py": "",
        "pipelines/__init__.py": "",
        "pipelines/config.py": "from model import vae\n",
        "pipelines/lazy/__init__.py": '_WHERE = {"Thing": "pipelines.config"}\n',
        "pipelines/sources/__init__.py": "",
        "pipelines/sources/direct.py": "from pipelines.config import DataConfig\n",
        "pipelines/sources/lazy.py": "def later():\n    from pipelines.lazy import Thing\n",
        "pipelines/sources/clean.py": "import core\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == []
    assert indirect_violations(tmp_path) == [
        "pipelines.sources.direct -> pipelines.config -> model",
        "pipelines.sources.lazy -> pipelines.config -> model",
    ]


@pytest.mark.parametrize("rule, module, imported", [
    ("serving", "serving/client.py", "model.vae"),
    ("model", "model/vae.py", "pipelines.workdir"),
    ("pipelines.encode", "pipelines/encode/job.py", "pipelines.train.run"),
    ("pipelines.sources", "pipelines/sources/base.py", "model.vae"),
])
def test_the_rule_check_catches_a_forbidden_import(rule, module, imported, tmp_path):
    """The checker itself: a forbidden import added to a file is reported."""
    original = (ROOT / module).read_text()
    fake_root = tmp_path
    for top in OURS:
        for path in (ROOT / top).rglob("*.py"):
            target = fake_root / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (fake_root / module).write_text(original + f"\n\ndef _late():\n    import {imported}\n")
    assert [v for v in violations(fake_root) if imported in v] == [f"{module}:{len(original.splitlines()) + 4} imports {imported}"]
