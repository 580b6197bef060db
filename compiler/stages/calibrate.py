"""CalibrateStage: activation ranges of the FP32 ONNX model over the calibration set, collected once.

The ranges are saved in ONNX Runtime's calibration-cache format, so every target that wants a QDQ model
(uint8 activations for ONNX Runtime on x86, signed symmetric int8 for TensorRT) quantizes from the same
statistics without running the calibration data again.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgec.compiler.context import BuildContext, track
from edgec.compiler.errors import CalibrationError, ConfigError, QuantizationError, missing_dependency
from edgec.compiler.stage import Stage
from edgec.compiler.types import CalibrationSet, CalibrationStats, Feeds, OnnxModel

RANGES_FILE = "ranges.json"
METHODS = ("minmax", "entropy", "percentile")


def ort_method(method: str) -> Any:
    """ONNX Runtime's CalibrationMethod for edgec's method name."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]


CHUNK = 32


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a slice of a calibration set."""

    def __init__(self, samples: list[Feeds], names: list[str]):
        self._samples = samples
        self._names = names
        self._it: Iterator[Feeds] | None = None

    def get_next(self) -> Feeds | None:
        if self._it is None:
            self._it = iter(self._samples)
        sample = next(self._it, None)
        return None if sample is None else {n: sample[n] for n in self._names}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._samples)


def _chunks(calibration: CalibrationSet, size: int) -> Iterator[list[Feeds]]:
    chunk: list[Feeds] = []
    for sample in calibration:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class CalibrateStage(Stage):
    name = "calibrate"
    reads = ("onnx", "calibration")
    writes = "calibration_stats"
    tools = ("onnxruntime", "onnx")

    def __init__(self, method: str = "minmax", percentile: float = 99.999):
        if method not in METHODS:
            raise ConfigError(f"unknown calibration method '{method}'", hint=f"use one of: {', '.join(METHODS)}")
        self.method = method
        self.percentile = percentile

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"method": self.method}
        if self.method == "percentile":
            opts["percentile"] = self.percentile
        return opts

    def requires(self, inputs: dict[str, Any], ctx: BuildContext) -> None:
        # Whether a build has calibration data is checked when it is planned; this is what the stage itself
        # needs of its input, for callers that run it on their own.
        if inputs.get("calibration") is None or len(inputs["calibration"]) == 0:
            raise CalibrationError("no calibration samples to calibrate with", hint="pass --calib PATH with samples")

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> CalibrationStats:
        try:
            from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", "INT8 calibration") from None
        onnx_model: OnnxModel = inputs["onnx"]
        calibration: CalibrationSet = inputs["calibration"]
        extra: dict[str, Any] = {}
        if self.method == "percentile":
            extra["percentile"] = self.percentile
        stats = CalibrationStats(out_dir / RANGES_FILE, self.method, len(calibration), 0)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    calibrator = create_calibrator(
                        onnx_model.path,
                        None,
                        augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                        calibrate_method=ort_method(self.method),
                        extra_options=extra,
                    )
                    # Fed in chunks so memory does not grow with the calibration set: each collect_data call
                    # merges its chunk into the ranges so far. (ORT's own max_intermediate_outputs option drops
                    # every full chunk without merging it in ORT 1.32, leaving only the last len % n samples.)
                    chunks = track(ctx.report, "[calibrate] samples", _chunks(calibration, CHUNK),
                                   total=-(-len(calibration) // CHUNK))
                    for chunk in chunks:
                        calibrator.collect_data(_Reader(chunk, onnx_model.spec.input_names))
                    data = calibrator.compute_data()
            except Exception as exc:
                raise QuantizationError(
                    f"calibration of '{onnx_model.path.name}' failed: {' '.join(str(exc).split())[:300]}",
                    hint="check that the calibration data matches the model's inputs",
                ) from None
        save_tensors_data(data, stats.path)
        stats.tensors = len(list(data.keys()))
        return stats

    def save(self, value: CalibrationStats, out_dir: Path) -> dict[str, Any]:
        return {"file": value.path.name, "method": value.method, "samples": value.samples, "tensors": value.tensors}

    def restore(self, result: dict[str, Any], files: Path) -> CalibrationStats:
        return CalibrationStats(files / result["file"], result["method"], result["samples"], result["tensors"])

    def summary(self, value: CalibrationStats) -> dict[str, Any]:
        return {"method": value.method, "samples": value.samples, "tensors": value.tensors}
