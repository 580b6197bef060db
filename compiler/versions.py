"""Versions of the tools a build depends on, read from package metadata (nothing is imported)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

#: Packages whose versions can change what a stage writes: a stage's cache key holds those it names in ``tools``.
TRACKED = (
    "edgec", "numpy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "safetensors", "torch-pruning",
    "torchao", "litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert", "tflite-micro",
    "ethos-u-vela",
)


@functools.lru_cache(maxsize=None)
def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """A hash of edgec's own Python sources, so the build cache never reuses a stage written by other code
    (a development tree keeps its version number while its code changes)."""
    import hashlib
    from pathlib import Path

    import edgec.compiler

    root = Path(edgec.compiler.__file__).resolve().parent.parent  # the folder holding compiler/, targets/, ...
    h = hashlib.sha256()
    for folder in ("compiler", "targets", "calibration_data", "src/edgec"):
        for path in sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else ():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def tool_versions(packages: tuple[str, ...] = TRACKED) -> dict[str, str]:
    found = {p: version_of(p) for p in packages}
    if found.get("edgec"):
        found["edgec"] = f"{found['edgec']}+src.{source_digest()}"
    found = {p: v for p, v in found.items() if v is not None}
    found["python"] = platform.python_version()
    return found
