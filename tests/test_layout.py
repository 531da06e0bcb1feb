"""The package tree is the architecture: each package imports only from the packages below it,
the top level holds entry points only, and tests/ mirrors nucleiseg/."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "nucleiseg"
#: what each package may import from (besides itself); entry points may import anything
ALLOWED = {
    "channels": set(),  # the output channels' vocabulary: below every other package
    "files": set(),
    "data": set(),
    "models": set(),
    "metrics": set(),
    "postprocessing": set(),
    "viz": set(),
    "lightning": {"models", "metrics", "postprocessing"},
    "training": {"files", "data", "models", "metrics", "postprocessing", "viz", "lightning"},
    "inference": {
        "files", "data", "models", "metrics", "postprocessing", "viz", "lightning", "training",
    },
    "wsi": {"files", "data", "models", "postprocessing"},
    "analysis": {"files", "viz"},
}  # fmt: skip
for _package in set(ALLOWED) - {"channels"}:
    ALLOWED[_package].add("channels")
ENTRY_POINTS = {
    "train", "predict", "evaluate", "export", "tune_postprocess", "report", "study",
    "generalization", "ensemble",
}  # fmt: skip


def nucleiseg_imports(path: Path) -> set[str]:
    """The nucleiseg packages a module imports (``nucleiseg.<package>...``), lazy ones too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nucleiseg" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_imports_only_from_packages_below_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:
            continue  # an entry point or the package root: on top
        package = parts[0]
        assert package in ALLOWED, f"nucleiseg/{package}/ is not in the layering table"
        for imported in nucleiseg_imports(path) - {package}:
            if imported not in ALLOWED[package]:
                upward.append(f"{path.relative_to(ROOT)} imports nucleiseg.{imported}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_top_level_holds_only_thin_entry_points():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == ENTRY_POINTS
    for name in ENTRY_POINTS:
        lines = (PACKAGE / f"{name}.py").read_text().splitlines()
        assert len(lines) <= 80, f"nucleiseg/{name}.py has {len(lines)} lines: move logic down"


def test_tests_mirror_the_packages():
    test_dirs = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    test_dirs -= {"fixtures", "__pycache__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert test_dirs <= packages | {"benchmarks"}, test_dirs - packages
    assert not list(PACKAGE.rglob("fault_injection.py")), "test helpers live under tests/"
