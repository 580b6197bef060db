"""Runs an mcu artifact (its full-integer .tflite) in tflite-micro's Python interpreter on the host.

The interpreter gets exactly the arena the build recorded, so every run also checks that the recorded size
suffices. Feeds come laid out like the artifact's spec (float, NCHW images); the shared TFLite helpers
transpose and quantize them and turn the int8 outputs back. For Ethos-U profiles this runs the INT8 model the
NPU model was compiled from (the host has no NPU; vela's NPU ops compute the same integer arithmetic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import CalibrationError, TargetBuildError, missing_dependency
from edgec.compiler.types import Feeds, InputSpec, LayerOutput
from edgec.targets.base import Runner
from edgec.targets.litert import LayerReader, TFLiteIO, run_fixed_shape
from edgec.targets.tflm.arena import captured_stderr, first_error


def tensor_positions(path: Path, names: list[str], which: str) -> list[int]:
    """Positions of the named tensors among the subgraph's inputs (or outputs): TFLM indexes them by position."""
    from edgec.targets.tflm.ops import _model

    sg = _model(Path(path)).subgraphs[0]
    order = sg.inputs if which == "inputs" else sg.outputs
    by_name = {}
    for pos, idx in enumerate(order):
        name = sg.tensors[idx].name
        by_name[name.decode() if isinstance(name, bytes) else name] = pos
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CalibrationError(f"'{path}' has no {which} {missing} that its manifest records",
                               hint="rebuild the artifact with edgec build")
    return [by_name[n] for n in names]


class TFLMRunner(Runner):
    """One full-integer .tflite file in the tflite-micro interpreter, with the arena the build recorded."""

    def __init__(self, path: Path, spec: InputSpec, inputs: list[TFLiteIO], outputs: list[TFLiteIO], arena_bytes: int):
        self.path = Path(path)
        self.spec = spec
        self.inputs = inputs
        self.outputs = outputs
        self.arena_bytes = int(arena_bytes)
        self.interpreter: Any = None
        self._layers: LayerReader | None = None

    def load(self) -> None:
        try:
            import tflite_micro
            from tflite_micro import runtime
        except ImportError:
            raise missing_dependency("tflite-micro", "mcu", "running mcu artifacts") from None
        self.runtime = f"tflite-micro {tflite_micro.__version__} (host interpreter, reference kernels)"
        self._in_pos = tensor_positions(self.path, [io.tflite_name for io in self.inputs], "inputs")
        self._out_pos = tensor_positions(self.path, [io.tflite_name for io in self.outputs], "outputs")
        with captured_stderr() as log:
            try:
                self.interpreter = runtime.Interpreter.from_file(str(self.path), arena_size=self.arena_bytes)
            except (RuntimeError, ValueError):
                self.interpreter = None
        if self.interpreter is None:
            raise TargetBuildError(
                f"tflite-micro cannot load '{self.path.name}' in its recorded arena of {self.arena_bytes} bytes: "
                f"{first_error(''.join(log))}",
                hint="rebuild the artifact with edgec build (the arena is measured again)",
            )

    def close(self) -> None:
        self.interpreter = None
        self._layers = None

    def input_specs(self) -> InputSpec:
        return self.spec

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with captured_stderr() as log:
            try:
                for pos, arr in zip(self._in_pos, arrays):
                    self.interpreter.set_input(arr, pos)
                self.interpreter.invoke()
                failed = None
            except (RuntimeError, ValueError) as exc:
                failed = exc
        if failed is not None:
            raise TargetBuildError(f"tflite-micro failed to run '{self.path.name}': "
                                   f"{first_error(''.join(log)) if ''.join(log).strip() else failed}")
        return [np.array(self.interpreter.get_output(pos)) for pos in self._out_pos]

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        return run_fixed_shape(self.inputs, self.outputs, feeds, self._invoke, self.path.name)

    def layer_outputs(self, feeds: Feeds) -> list[LayerOutput]:
        """Every op output of the same .tflite file on LiteRT's reference kernels: tflite-micro's interpreter
        cannot keep its intermediate tensors (they share the arena), and its kernels are ports of those."""
        if self._layers is None:
            self._layers = LayerReader(self.path, self.inputs, reference_kernels=True)
        return self._layers(feeds)
