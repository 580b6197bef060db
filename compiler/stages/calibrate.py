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
CHANNEL_MAX_FILE = "channel_max.npz"
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


def _channel_max(onnx_model: OnnxModel, calibration: CalibrationSet, out: Path) -> Path | None:
    """For an attention model: the largest |value| per channel (last axis) of each linear layer's input over the
    calibration set, saved to ``out`` (what ``targets.qdq.smooth_linear_inputs`` needs). None for other models:
    their int8 path does not smooth, and this costs one more pass over the calibration set."""
    import numpy as np
    import onnx

    from edgec.compiler.onnxutil import expose_outputs, graph_structure, linear_layers, ort_session

    model = onnx.load(str(onnx_model.path))
    if not graph_structure(model).is_attention_model:
        return None
    tensors = sorted(linear_layers(model))
    if not tensors:
        return None
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        exposed = Path(tmp) / "exposed.onnx"
        expose_outputs(model, tensors, exposed)
        session = ort_session(exposed, level="basic")
        names = [i.name for i in session.get_inputs()]
        found: dict[str, Any] = {}
        for sample in calibration:
            for name, value in zip(tensors, session.run(tensors, {n: sample[n] for n in names})):
                v = np.abs(np.asarray(value, np.float32))
                v = v.reshape(-1, v.shape[-1]).max(axis=0) if v.ndim else v.reshape(1)
                found[name] = v if name not in found else np.maximum(found[name], v)
    np.savez(out, **{f"t{i}": found[t] for i, t in enumerate(tensors)}, names=np.array(tensors))
    return out


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
        # Part of the cache key: statistics cached before the per-channel maxima existed do not stand for these.
        opts: dict[str, Any] = {"method": self.method, "channel_max": "linear-layer inputs of attention models"}
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
        stats.channel_max = _channel_max(onnx_model, calibration, out_dir / CHANNEL_MAX_FILE)
        return stats

    def save(self, value: CalibrationStats, out_dir: Path) -> dict[str, Any]:
        return {"file": value.path.name, "method": value.method, "samples": value.samples, "tensors": value.tensors,
                "channel_max": value.channel_max.name if value.channel_max else None}

    def restore(self, result: dict[str, Any], files: Path) -> CalibrationStats:
        cmax = result.get("channel_max")
        return CalibrationStats(files / result["file"], result["method"], result["samples"], result["tensors"],
                                files / cmax if cmax else None)

    def summary(self, value: CalibrationStats) -> dict[str, Any]:
        return {"method": value.method, "samples": value.samples, "tensors": value.tensors}
