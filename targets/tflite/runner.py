"""Runs a .tflite artifact on LiteRT (ai-edge-litert, XNNPACK), else tflite-runtime, else TensorFlow Lite.

Feeds come laid out like the artifact's spec (float, NCHW images); the runner transposes and quantizes them to
what the file holds (NHWC, int8) and turns the outputs back, using the artifact's recorded ``io``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, TargetUnavailableError
from edgec.compiler.types import Feeds, InputSpec, LayerOutput
from edgec.targets.base import Runner
from edgec.targets.litert import LayerReader, TFLiteIO, quiet_litert, run_fixed_shape

#: (module, distribution, attribute path of the Interpreter class), tried in order. tflite-runtime does not
#: apply XNNPACK to INT8 models (12-18x slower on the same file), so it is only a fallback.
INTERPRETERS = (
    ("ai_edge_litert.interpreter", "ai-edge-litert", "Interpreter"),
    ("tflite_runtime.interpreter", "tflite-runtime", "Interpreter"),
    ("tensorflow", "tensorflow", "lite.Interpreter"),
)


def find_interpreter() -> tuple[type, str]:
    """The first installed Interpreter class and "<distribution> <version>"."""
    for module, dist, attr in INTERPRETERS:
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            continue
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "?"
        return obj, f"{dist} {version}"
    raise TargetUnavailableError(
        "running .tflite artifacts needs a TFLite interpreter: none of ai-edge-litert, tflite-runtime or "
        "tensorflow is installed",
        hint="pip install ai-edge-litert (or: pip install 'edgec[arm]')",
    )


class TFLiteRunner(Runner):
    """One .tflite file. Batches larger than the file's fixed batch run one row at a time (a TFLite graph from
    litert-torch has concrete shapes, so resizing its inputs is not safe in general)."""

    def __init__(
        self,
        path: Path,
        spec: InputSpec,
        inputs: list[TFLiteIO],
        outputs: list[TFLiteIO],
        threads: int | None = None,
    ):
        self.path = Path(path)
        self.spec = spec
        self.inputs = inputs
        self.outputs = outputs
        self.threads = threads
        self.interpreter: Any = None
        self._layers: LayerReader | None = None

    def load(self) -> None:
        cls, self.runtime = find_interpreter()
        with quiet_litert():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = cls(model_path=str(self.path), num_threads=self.threads or None)
            self.interpreter.allocate_tensors()
        by_name = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        by_name.update({d["name"]: d["index"] for d in self.interpreter.get_output_details()})
        missing = [io.tflite_name for io in (*self.inputs, *self.outputs) if io.tflite_name not in by_name]
        if missing:
            raise CalibrationError(
                f"'{self.path}' has no tensors {missing}, which its manifest records",
                hint="rebuild the artifact with edgec build",
            )
        self._in_index = [by_name[io.tflite_name] for io in self.inputs]
        self._out_index = [by_name[io.tflite_name] for io in self.outputs]

    def close(self) -> None:
        self.interpreter = None
        self._layers = None

    def input_specs(self) -> InputSpec:
        return self.spec

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for index, arr in zip(self._in_index, arrays):
            self.interpreter.set_tensor(index, arr)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self._out_index]

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        return run_fixed_shape(self.inputs, self.outputs, feeds, self._invoke, self.path.name)

    def layer_outputs(self, feeds: Feeds) -> list[LayerOutput]:
        """Every op output, from a second LiteRT interpreter without XNNPACK (on its builtin kernels), which
        keeps them all."""
        if self._layers is None:
            self._layers = LayerReader(self.path, self.inputs)
        return self._layers(feeds)
