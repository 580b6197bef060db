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


def tool_versions(packages: tuple[str, ...] = TRACKED) -> dict[str, str]:
    found = {p: version_of(p) for p in packages}
    found = {p: v for p, v in found.items() if v is not None}
    found["python"] = platform.python_version()
    return found
