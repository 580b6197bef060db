"""CalibrateStage: activation ranges of the FP32 ONNX model over the calibration set, collected once.

The ranges are saved in ONNX Runtime's calibration-cache format, so every target that wants a QDQ model
(uint8 activations for ONNX Runtime on x86, signed symmetric int8 for TensorRT) quantizes from the same
statistics without running the calibration data again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import BuildContext, track
from edgec.compiler.errors import CalibrationError, ConfigError, QuantizationError, missing_dependency
from edgec.compiler.stage import Stage
from edgec.compiler.stages.export import OnnxModel
from edgec.compiler.types import CalibrationSet, Feeds

RANGES_FILE = "ranges.json"
METHODS = ("minmax", "entropy", "percentile")


class CalibrationStats:
    """Per-tensor activation ranges of one ONNX model, as ONNX Runtime's calibration cache file."""

    def __init__(self, path: Path, method: str, samples: int, tensors: int):
        self.path = Path(path)
        self.method = method
        self.samples = samples
        self.tensors = tensors

    @property
    def ort_method(self) -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.method]

    def quantize(
        self,
        src: Path,
        out: Path,
        *,
        activation: str,
        per_channel: bool = True,
        reduce_range: bool = False,
        op_types: list[str] | None = None,
        nodes: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        purpose: str = "INT8 quantization",
    ) -> None:
        """Write ``out``, a QDQ model of ``src`` quantized from these statistics (no calibration data is read).

        ``activation`` is "uint8" or "int8"; weights are always int8. Each target passes the flavour it runs
        fastest (``extra`` holds ONNX Runtime's quantizer options, e.g. symmetric activations, no int32 bias).
        """
        try:
            from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", purpose) from None
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(src),
                    str(out),
                    calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    nodes_to_quantize=nodes,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=self.ort_method,
                    calibration_cache_path=str(self.path),
                    extra_options=extra or {},
                )
        except Exception as exc:
            raise QuantizationError(
                f"{purpose} of '{src.name}' failed: {' '.join(str(exc).split())[:300]}",
                hint="try --calibration-method minmax, or build fp32/fp16 only",
            ) from None
        finally:
            root.setLevel(level)

    def ranges(self) -> dict[str, tuple[float, float]]:
        from onnxruntime.quantization.calibrate import load_tensors_data

        data = load_tensors_data(self.path)
        def scalar(x: Any) -> float:
            return float(np.asarray(x).ravel()[0])

        return {k: (scalar(v.range_value[0]), scalar(v.range_value[1])) for k, v in data.items()}


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
        if inputs.get("calibration") is None or len(inputs["calibration"]) == 0:
            raise CalibrationError("INT8 needs calibration data", hint="pass --calib PATH (.npz, .npy, an image folder)")

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
                        calibrate_method=stats.ort_method,
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
