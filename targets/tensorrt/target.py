"""TensorRTTarget: the host half of a Jetson / NVIDIA GPU build, FP32, FP16 and TensorRT-flavoured INT8 QDQ ONNX.

Engines cannot be built on the host (they are tied to the device's GPU and TensorRT version), so the build
writes a bundle the device turns into engines with ``edgec engine build``. Every artifact is linted for ops
TensorRT's parser refuses, and every INT8 model is checked against TensorRT's QDQ rules before it is accepted.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from edgec.compiler.errors import TargetBuildError
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import (
    Artifact,
    CalibrationSet,
    InputSpec,
    ModelFormat,
    OnnxModel,
    Precision,
    sha256_file,
)
from edgec.targets.base import Runner, Target, require_packages
from edgec.targets.qdq import smooth_alpha_option
from edgec.targets.tensorrt import bundle as bundle_mod
from edgec.targets.tensorrt import conformance, devices, lint
from edgec.targets.tensorrt.fp16 import convert_fp16
from edgec.targets.tensorrt.quantize import quantize_tensorrt


@dataclasses.dataclass
class TensorRTOptions:
    device: str = dataclasses.field(
        default="gpu",
        metadata={"help": "the TensorRT device profile whose hardware facts apply (set by --target)"},
    )
    trt_major: str | int = dataclasses.field(
        default="auto",
        metadata={"help": "TensorRT major the bundle targets: auto = every one the device's JetPack ships",
                  "choices": ("auto", 10, 11)},
    )
    dla_core: int | None = dataclasses.field(
        default=None, metadata={"help": "DLA core the engines use for fp16/int8 (profiles with DLA only)"}
    )
    gpu_fallback: bool = dataclasses.field(
        default=True, metadata={"help": "let layers DLA cannot run fall back to the GPU"}
    )
    min_batch: int = dataclasses.field(default=1, metadata={"help": "smallest batch of the optimization profile"})
    opt_batch: int = dataclasses.field(default=1, metadata={"help": "batch TensorRT tunes the engine for"})
    max_batch: int = dataclasses.field(default=8, metadata={"help": "largest batch of the optimization profile"})
    dynamic_dims: dict | None = dataclasses.field(
        default=None, metadata={"help": "[min, opt, max] for other named dynamic axes, e.g. {seq: [1, 128, 512]}"}
    )
    per_channel: bool = dataclasses.field(
        default=True, metadata={"help": "int8 weights per output channel (TensorRT's recommended flavour)"}
    )
    fp16_limit: float = dataclasses.field(
        default=32768.0,
        metadata={"help": "fp16: ops whose calibration activations exceed this |value| stay FP32 (FP16 max is "
                          "65504; the default leaves 2x headroom for inputs beyond the calibration set)"},
    )
    fp16_range_samples: int = dataclasses.field(
        default=64, metadata={"help": "fp16: calibration samples the range check runs"}
    )
    smooth_alpha: float = smooth_alpha_option()
    keep_float: list = dataclasses.field(
        default_factory=list,
        metadata={"help": "nodes of the FP32 export left without Q/DQ in INT8 models, running as FP32 islands (the "
                  "build's accuracy fallback fills it)"},
    )
    rtx_lint: bool = dataclasses.field(
        default=True, metadata={"help": "also parse each ONNX file with tensorrt-rtx when it is installed (a hint)"}
    )


class TensorRTTarget(Target):
    name = "tensorrt"
    consumes = ModelFormat.ONNX
    precisions = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})
    Options = TensorRTOptions
    tools = ("onnx", "onnxruntime")

    @classmethod
    def check_available(cls) -> None:
        require_packages(("onnx", "onnxruntime"), "onnx", "the tensorrt target's bundles")

    def __init__(self, options: TensorRTOptions | None = None):
        super().__init__(options)
        opts = self.options
        self.facts = devices.device_facts(opts.device)
        self.majors = devices.target_majors(self.facts, opts.trt_major)
        devices.check_dla_request(self.facts, opts.dla_core, self.majors)

    def reads(self, precision: Precision) -> tuple[str, ...]:
        # Every precision also reads the raw calibration set (None without --calib): its shapes size the
        # optimization profile's dynamic axes, and FP16 checks its activation peaks (the statistics exist only
        # when INT8 was asked for, and clipped percentile/entropy ranges would hide the peaks anyway).
        if precision == Precision.INT8:
            return ("onnx", "calibration_stats", "calibration")
        return ("onnx", "calibration")

    def build(self, model: OnnxModel, precision: Precision, calibration: Any, out_dir: Path,
              samples: CalibrationSet | None = None) -> list[Artifact]:
        import onnx

        opts = self.options
        if precision != Precision.INT8:
            samples = calibration
        out = out_dir / f"model.{precision.value}.onnx"
        unsupported = lint.unsupported_nodes(model.path)  # before any conversion: fail fast
        if unsupported:
            listed = "; ".join(str(f) for f in unsupported[:8])
            more = f" (and {len(unsupported) - 8} more)" if len(unsupported) > 8 else ""
            raise TargetBuildError(
                f"'{model.path.name}' has ops TensorRT's ONNX parser does not support: {listed}{more}",
                hint="replace them in the model (or export them differently), or build for --target cpu",
            )
        profile, sources = bundle_mod.optimization_profile(
            onnx_spec(onnx.load(str(model.path), load_external_data=False)), opts.min_batch, opts.opt_batch,
            opts.max_batch, opts.dynamic_dims, declared=model.spec, seen=bundle_mod.observed_shapes(samples),
        )
        meta: dict[str, Any] = {
            "runtime": "tensorrt",
            "device": self.facts.name,
            "device_facts": self.facts.to_dict(),
            "tensorrt_majors": list(self.majors),
            "optimization_profile": profile,
            "profile_sources": sources,
            "dla": self._dla(precision, profile),
            "engine": bundle_mod.engine_name(precision.value),
        }
        if precision == Precision.FP32:
            shutil.copyfile(model.path, out)
        elif precision == Precision.FP16:
            meta["fp16"] = convert_fp16(model.path, out, calibration, opts.fp16_limit, opts.fp16_range_samples)
        else:
            info = quantize_tensorrt(model.path, out, calibration, per_channel=opts.per_channel,
                                     keep_float=tuple(opts.keep_float), smooth_alpha=opts.smooth_alpha)
            conformance.assert_conformant(out, require_per_channel=opts.per_channel,
                                          float_islands=info["float_islands"])
            info["conformance"] = "passed (edgec.targets.tensorrt.conformance)"
            meta["int8"] = info
        self._check_valid(out, precision)
        meta["lint"] = lint.lint(out, use_rtx=opts.rtx_lint)
        spec = InputSpec(model.spec.inputs, model.spec.outputs)
        return [Artifact(out, ModelFormat.ONNX, precision, self.name, spec, sha256_file(out), meta)]

    higher_precision = "float islands (no Q/DQ around them: the engine does not run them in INT8)"

    def keep_in_higher_precision(self, nodes: list[str]) -> TensorRTTarget:
        return type(self)(dataclasses.replace(self.options, keep_float=sorted({*self.options.keep_float, *nodes})))

    def _dla(self, precision: Precision, profile: dict[str, Any]) -> dict[str, Any]:
        core = self.options.dla_core
        if core is None:
            why = "not asked (dla_core)" if self.facts.dla_cores else f"{self.facts.name} has no DLA"
            return {"core": None, "why": why}
        if precision == Precision.FP32:
            return {"core": None, "why": "DLA runs FP16 and INT8 only: fp32 builds for the GPU"}
        majors = [m for m in self.majors if devices.dla_rule(self.facts, (m,))[0]]
        dla = {
            "core": core,
            "gpu_fallback": self.options.gpu_fallback,
            "majors": majors,
            "why": "TensorRT 10.x builds DLA engines weakly typed (--fp16/--int8); 11.x from 11.4.1 strongly typed",
        }
        if any(p["min"] != p["max"] for p in profile.values()):
            dla["note"] = "DLA runs static shapes only: with a batch range every layer falls back to the GPU; " \
                          "set min_batch = opt_batch = max_batch for DLA"
        return dla

    @staticmethod
    def _check_valid(path: Path, precision: Precision) -> None:
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise TargetBuildError(f"the {precision.value} model '{path.name}' is invalid: {exc}") from None

    def finish_folder(self, folder: Path, artifacts: list[Artifact]) -> list[Path]:
        """Write the bundle files (bundle.json, README.md) once every precision of a profile is in ``folder``."""
        return bundle_mod.write_bundle(folder, [a for a in artifacts if a.target == self.name])

    @classmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> Runner:
        """The engine's runner on a device that has one; the ONNX Runtime estimate anywhere else."""
        from edgec.compiler.errors import TargetUnavailableError
        from edgec.targets.tensorrt import cudart
        from edgec.targets.tensorrt.runner import HostEstimateRunner, TensorRTRunner

        path = Path(artifact.path)
        engine = path.with_name(artifact.metadata.get("engine") or bundle_mod.engine_name(artifact.precision.value))
        count, _why = cudart.device_count()
        if count and _tensorrt_importable():
            if not engine.is_file():
                raise TargetUnavailableError(
                    f"{artifact.name}: no TensorRT engine next to '{path.name}' on this device",
                    hint=f"build it first: edgec engine build {path.parent} --precision {artifact.precision.value}",
                )
            return TensorRTRunner(engine, artifact.spec, path.parent)
        cls.check_available()
        majors = tuple(artifact.metadata.get("tensorrt_majors") or ())
        device = artifact.metadata.get("device") or artifact.metadata.get("profile") or ""
        return HostEstimateRunner(path, threads, device=device, majors=majors)


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None
