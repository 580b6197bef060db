"""No non-test function is longer than 100 lines (from ``def`` to its last line): long ones are split into
named steps."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("src", "compiler", "targets", "calibration_data", "benchmarks", "bench")
MAX_LINES = 100


def _long_functions() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_100_lines():
    assert (REPO / "src" / "edgec").is_dir()
    offenders = _long_functions()
    assert not offenders, f"functions longer than {MAX_LINES} lines (split them into named steps): {offenders}"
