"""The import rules of ARCHITECTURE.md, checked on every import statement of the packages
(top-level and inside functions alike)."""

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


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file; relative imports are resolved."""
    tree = ast.parse(path.read_text(), str(path))
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


def test_the_packages_keep_the_import_rules():
    assert violations() == []


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
