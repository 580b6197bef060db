"""Versions of the tools a build depends on, read from package metadata (nothing is imported)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

#: Packages whose versions can change what a stage writes: a stage's cache key holds those it names in ``tools``.
TRACKED = (
    "edgec", "numpy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "safetensors", "torch-pruning",
    "torchao", "litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert", "tflite-micro",
    "ethos-u-vela", "executorch",
)


@functools.cache
def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


#: What edgec code changes a build's output: the core, the targets, the data readers and the driver's build
#: path. The CLI's wording, the benchmark suite (bench/, outside the package) and the reports are left out, so
#: editing them keeps every build cache valid.
BUILD_SOURCES = ("compiler", "targets", "calibration_data", "src/edgec/api.py", "src/edgec/recipe.py",
                 "src/edgec/options.py")


def source_digest(root: Path | None = None) -> str:
    """A hash of the edgec sources that change what a build writes, so the build cache never reuses a stage
    written by other code (a development tree keeps its version number while its code changes)."""
    if root is None:
        return _installed_digest()
    return _digest(Path(root))


@functools.cache
def _installed_digest() -> str:
    import edgec.compiler

    return _digest(Path(edgec.compiler.__file__).resolve().parent.parent)  # the folder holding compiler/...


def _digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in BUILD_SOURCES:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            h.update(file.relative_to(root).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:12]


def tool_versions(packages: tuple[str, ...] = TRACKED) -> dict[str, str]:
    found = {p: version_of(p) for p in packages}
    if found.get("edgec"):
        found["edgec"] = f"{found['edgec']}+src.{source_digest()}"
    found = {p: v for p, v in found.items() if v is not None}
    found["python"] = platform.python_version()
    return found
