"""The build cache key holds a digest of the code that changes a build's output, and only of that code."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgec.compiler.versions import BUILD_SOURCES, source_digest

REPO = Path(__file__).resolve().parents[2]


def _copy_tree(dst: Path) -> Path:
    for folder in ("compiler", "targets", "calibration_data", "src", "bench"):
        shutil.copytree(REPO / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_benchmark_and_cli_edits_keep_the_cache_key(tmp_path):
    root = _copy_tree(tmp_path / "tree")
    before = source_digest(root)
    _edit(root / "bench" / "suite.py")
    _edit(root / "src" / "edgec" / "cli" / "build.py")
    assert source_digest(root) == before


def test_build_code_edits_change_the_cache_key(tmp_path):
    root = _copy_tree(tmp_path / "tree")
    before = source_digest(root)
    _edit(root / "compiler" / "stages" / "export.py")
    after_compiler = source_digest(root)
    assert after_compiler != before
    _edit(root / "src" / "edgec" / "api.py")
    assert source_digest(root) != after_compiler


def test_build_sources_exist():
    assert all((REPO / name).exists() or name.endswith("options.py") for name in BUILD_SOURCES)
