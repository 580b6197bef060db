"""TFLiteTarget: .tflite files from the torch model via litert-torch (FP32, FP16 weights, full-integer INT8),
for Arm Linux boards running LiteRT with XNNPACK (Raspberry Pi 4/5, any Cortex-A)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from edgec.compiler.errors import missing_dependency
from edgec.compiler.types import Artifact, InputSpec, ModelFormat, Precision, sha256_file
from edgec.compiler.versions import version_of
from edgec.targets.base import Target, require_packages
from edgec.targets.litert import OBSERVERS, convert, io_from_metadata
from edgec.targets.tflite.runner import TFLiteRunner


@dataclasses.dataclass
class TFLiteOptions:
    channels_last_io: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "image inputs (4-D float NCHW) and feature-map outputs are NHWC in the .tflite, the "
            "layout TFLite kernels and camera pipelines use; the runner transposes, the manifest records how"
        },
    )
    observer: str = dataclasses.field(
        default="histogram",
        metadata={
            "help": "INT8 activation range observer: histogram (keeps the full logit range) or minmax",
            "choices": OBSERVERS,
        },
    )
    histogram_bins: int = dataclasses.field(
        default=2048, metadata={"help": "bins of the histogram observer (torchao's default)"}
    )
    per_channel: bool = dataclasses.field(default=True, metadata={"help": "int8 weights per output channel"})
    int8_mode: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "static: full integer (PT2E, calibrated); dynamic: int8 FULLY_CONNECTED weights with float "
            "activations quantized per call; auto = dynamic for attention models (static ranges cannot hold "
            "their outlier channels: a full-integer BERT-style encoder loses its embeddings), static otherwise",
            "choices": ("auto", "static", "dynamic"),
        },
    )
    keep_float: list = dataclasses.field(
        default_factory=list,
        metadata={"help": "nodes of the FP32 ONNX export whose ops stay float in static INT8 models (the build's "
                  "accuracy fallback fills it)"},
    )


class TFLiteTarget(Target):
    name = "tflite"
    consumes = ModelFormat.TORCH
    precisions = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})
    Options = TFLiteOptions
    tools = ("torch", "torchao", "litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert")
    converter = "converts PyTorch models (litert-torch)"

    @classmethod
    def check_available(cls) -> None:
        # LiteRT is imported (cheap, and catches a broken install); the converters are only looked up:
        # importing litert-torch takes ~10 s and prints torchao's CUDA warnings into `edgec targets`.
        require_packages(("ai_edge_litert",), "arm", "the tflite target")
        for module, dist in (("torch", "torch"), ("litert_torch", "litert-torch"),
                             ("ai_edge_quantizer", "ai-edge-quantizer")):
            if importlib.util.find_spec(module) is None:
                raise missing_dependency(dist, "arm", "the tflite target")

    def build(self, model: Any, precision: Precision, calibration: Any, out_dir: Path) -> list[Artifact]:
        out = Path(out_dir) / f"model.{precision.value}.tflite"
        opts = self.options
        result = convert(
            model.module, model.spec, precision, out, calibration,
            channels_last_io=opts.channels_last_io, observer=opts.observer, per_channel=opts.per_channel,
            histogram_bins=opts.histogram_bins, source=str(model.source), int8_mode=opts.int8_mode,
            keep_nodes=tuple(opts.keep_float),
        )
        layouts = {io.layout for io in result.inputs if io.layout}
        meta: dict[str, Any] = {
            "runtime": "ai-edge-litert (LiteRT, XNNPACK)",
            "converter": f"litert-torch {version_of('litert-torch') or '?'}",
            "io": {
                "inputs": [io.to_dict() for io in result.inputs],
                "outputs": [io.to_dict() for io in result.outputs],
            },
            "layout": layouts.pop() if len(layouts) == 1 else None,
            "channels_last_io": opts.channels_last_io,
            "ops": result.ops,
            "batch": result.info.get("batch"),
            "conversion_seconds": result.info.get("seconds"),
        }
        if "dynamic_axes_fixed_at_1" in result.info:
            meta["dynamic_axes_fixed_at_1"] = result.info["dynamic_axes_fixed_at_1"]
        if "quantization" in result.info:
            meta["quantization"] = result.info["quantization"]
        pairs = zip(result.inputs, model.spec.inputs)
        narrowed = [io.name for io, t in pairs if t.dtype == "int64" != io.dtype]
        if narrowed:
            meta["int64_inputs_as_int32"] = narrowed  # litert-torch narrows 64-bit I/O; the runner casts
        spec = InputSpec(model.spec.inputs, model.spec.outputs)
        return [Artifact(out, ModelFormat.TFLITE, precision, self.name, spec, sha256_file(out), meta)]

    higher_precision = "float32 (left unannotated by the PT2E quantizer)"

    def keep_in_higher_precision(self, nodes: list[str]) -> TFLiteTarget:
        return type(self)(dataclasses.replace(self.options, keep_float=sorted({*self.options.keep_float, *nodes})))

    @classmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> TFLiteRunner:
        inputs, outputs = io_from_metadata(artifact.metadata, artifact.path)
        return TFLiteRunner(Path(artifact.path), artifact.spec, inputs, outputs, threads)
