"""edgec.calibration_data stays light and imports only edgec.compiler."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgec.calibration_data

PACKAGE = Path(edgec.calibration_data.__file__).parent


def test_import_is_light():
    code = (
        "import sys, edgec.calibration_data\n"
        "heavy = ('torch', 'PIL', 'sklearn', 'skimage', 'onnx', 'onnxruntime')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_imports_only_the_compiler_layer():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "edgec" or name.startswith("edgec."):
                    allowed = name.startswith(("edgec.compiler", "edgec.calibration_data"))
                    assert allowed, f"{path.name} imports {name}"
