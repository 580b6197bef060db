"""edgec: an edge deployment compiler.

``edgec build`` turns a PyTorch or ONNX checkpoint into ONNX Runtime, TFLite, TFLite Micro and TensorRT
artifacts; ``edgec bench`` runs them on their real runtimes. This package is the driver (CLI, recipe, API);
the layers below it are ``edgec.benchmarks``, ``edgec.targets``, ``edgec.calibration_data`` and
``edgec.compiler``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("edgec")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
