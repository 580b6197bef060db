"""Versions of the tools a build depends on, read from package metadata (nothing is imported)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

TRACKED = ("edgec", "numpy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "safetensors")


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
