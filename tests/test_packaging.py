"""The package layout: setup.cfg lists every package, and imports point down the layers only."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {
    # folder -> edgec sub-packages it must not import
    "compiler": ("edgec.targets", "edgec.calibration_data", "edgec.benchmarks", "edgec.cli", "edgec.api",
                 "edgec.recipe", "edgec.demo"),
    "targets": ("edgec.calibration_data", "edgec.benchmarks", "edgec.cli", "edgec.api", "edgec.recipe", "edgec.demo"),
    "calibration_data": ("edgec.targets", "edgec.benchmarks", "edgec.cli", "edgec.api", "edgec.recipe", "edgec.demo"),
    "benchmarks": ("edgec.calibration_data", "edgec.cli", "edgec.api", "edgec.recipe", "edgec.demo"),
}


def _package_dirs() -> dict[str, Path]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        key, _, value = (s.strip() for s in line.partition("="))
        mapping[key] = REPO / value
    listed = [p.strip() for p in cfg["options"]["packages"].split() if p.strip()]
    return mapping, listed


def test_every_package_folder_is_listed():
    mapping, listed = _package_dirs()
    found = set()
    roots = {"edgec": REPO / "src" / "edgec", **{k: v for k, v in mapping.items() if k}}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    missing = sorted(found - set(listed))
    assert not missing, f"add to setup.cfg [options] packages: {missing}"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_imports_point_down_only():
    bad = []
    for folder, forbidden in LAYERS.items():
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, bad


def test_no_target_imports_another():
    targets = [p for p in (REPO / "targets").iterdir() if (p / "__init__.py").is_file()]
    bad = []
    for t in targets:
        others = [f"edgec.targets.{o.name}" for o in targets if o != t]
        for path in t.rglob("*.py"):
            for name in _imports(path):
                if any(name == o or name.startswith(o + ".") for o in others):
                    bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, bad


def test_always_imported_through_edgec():
    bad = []
    for folder in ("compiler", "targets", "calibration_data", "benchmarks", "src"):
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(path):
                if name.split(".")[0] in ("compiler", "targets", "calibration_data", "benchmarks"):
                    bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, bad
