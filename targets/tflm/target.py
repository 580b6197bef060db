"""TFLMTarget: full-integer INT8 .tflite for TFLite Micro on Cortex-M (and Ethos-U through vela), with firmware.

A build converts the torch model with litert-torch (PT2E INT8, int8 inputs and outputs), refuses anything that
is not full-integer or that TFLM cannot register, measures the tensor arena by bisection in tflite-micro's
interpreter, compiles Ethos-U profiles with vela (all ops on the NPU unless ``allow_cpu_fallback``), checks the
model against the profile's flash and the arena against its RAM, and compiles the generated firmware sources for
the profile's core. The artifact is the INT8 .tflite (what ``edgec bench`` runs, in TFLM on the host); the
profile folder also gets ``firmware/`` and, for Ethos-U, ``model.int8.vela.tflite``.

Shapes are fixed on a microcontroller: a dynamic batch is fixed at 1, any other dynamic axis is refused (the
arena is measured for one shape). For Ethos-U the host cannot run the NPU op, so the firmware's arena is vela's
offline-planned span plus TFLM's own allocations measured on the CPU model (see ``_npu_arena``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from edgec.compiler.errors import (
    ConfigError,
    QuantizationError,
    TargetBuildError,
    TargetUnavailableError,
    missing_dependency,
)
from edgec.compiler.types import Artifact, InputSpec, ModelFormat, Precision, TensorSpec, sha256_file
from edgec.compiler.versions import version_of
from edgec.targets.base import Target, require_packages
from edgec.targets.tflm import arena as arena_mod
from edgec.targets.tflm import firmware, ops, vela
from edgec.targets.tflm.boards import Board, board
from edgec.targets.tflm.runner import TFLMRunner

EXTRA = "mcu"


@dataclasses.dataclass
class TFLMOptions:
    board: str = dataclasses.field(
        default="cortex-m4",
        metadata={"help": "the mcu profile whose core, flash/RAM limits and NPU apply (set by --target)"},
    )
    arena_margin: float = dataclasses.field(
        default=0.10,
        metadata={"help": "added to the measured minimum arena as a fraction (0.10 = 10%), then rounded up to "
                          "16 bytes: covers the arena's alignment on the device and kernels (CMSIS-NN, Ethos-U) "
                          "that ask for a little more scratch than the host's reference kernels"},
    )
    allow_cpu_fallback: bool = dataclasses.field(
        default=False,
        metadata={"help": "Ethos-U profiles: accept a model whose ops vela leaves on the CPU (they run as TFLM "
                          "kernels on the Cortex-M); by default such a build fails and names the ops"},
    )
    vela_optimise: str = dataclasses.field(
        default="Performance",
        metadata={"help": "vela --optimise: Performance (fastest) or Size (least SRAM)",
                  "choices": ("Performance", "Size")},
    )
    vela_system_config: str | None = dataclasses.field(
        default=None, metadata={"help": "vela --system-config; default: the profile's (vela's default for the NPU)"}
    )
    vela_memory_mode: str | None = dataclasses.field(
        default=None, metadata={"help": "vela --memory-mode; default: the profile's (vela's default for the NPU)"}
    )
    vela_config: str | None = dataclasses.field(
        default=None, metadata={"help": "vela --config file describing your board; default: vela's Arm/vela.ini"}
    )
    int16_layers: list = dataclasses.field(
        default_factory=list,
        metadata={"help": "nodes of the FP32 ONNX export computed with int16 activations and int8 weights (TFLite "
                  "16x8, where TFLM has the kernel); the build's accuracy fallback fills it"},
    )
    compile_check: bool | str = dataclasses.field(
        default="auto",
        metadata={"help": "compile the generated sources with arm-none-eabi-g++ for the profile's core and record "
                          "their size; auto = when the compiler is on PATH (the manifest says when it was skipped)",
                  "choices": ("auto", True, False)},
    )


def fixed_spec(spec: InputSpec, source: str) -> InputSpec:
    """The spec with a dynamic batch fixed at 1; a dynamic axis other than the batch is refused."""
    inputs = []
    for t in spec.inputs:
        for axis, d in enumerate(t.shape):
            if not isinstance(d, int) and axis != 0:
                example = "x".join(
                    str(s) if isinstance(s, int) else ("1" if i == 0 else "SIZE") for i, s in enumerate(t.shape)
                )
                raise ConfigError(
                    f"input '{t.name}' of '{source}' has the dynamic axis {axis} ('{d}'): a microcontroller "
                    "model has fixed shapes (its arena is sized for them); only a dynamic batch is fixed at 1",
                    hint=f"give that axis the size the device sees: --input {t.name}:{example}",
                )
        inputs.append(TensorSpec(t.name, t.concrete_shape(1), t.dtype, t.layout))
    outputs = [TensorSpec(t.name, t.concrete_shape(1), t.dtype, t.layout) for t in spec.outputs]
    return InputSpec(tuple(inputs), tuple(outputs))


def check_fits(b: Board, what: str, size: int, limit: int, memory: str, hint: str) -> None:
    if size > limit:
        raise TargetBuildError(
            f"{what} takes {size} bytes ({size / 1024:.1f} KiB), more than the {limit} bytes "
            f"({limit / 1024:.1f} KiB) of {memory} the {b.name} profile has",
            hint=hint,
        )


def _settings(meta: dict[str, Any], model_file: str, model: bytes) -> firmware.Settings:
    """What the firmware files say, from an artifact's metadata and the model they embed."""
    io = meta["io"]
    fw = meta["firmware"]
    figures = {
        "model (flash)": f"{len(model)} bytes (limit {meta['board']['flash_bytes']})",
        "tensor arena (RAM)": f"{fw['arena_bytes']} bytes (limit {meta['board']['ram_bytes']})",
        "arena, measured minimum on the host (CPU model)": f"{meta['arena']['minimum_bytes']} bytes",
    }
    v = meta.get("vela")
    if v:
        figures.update({
            "NPU / CPU ops (vela)": f"{v['npu_ops']} / {v['cpu_ops']}",
            "ops left to TFLM on the CPU (vela)": vela.op_counts(v["cpu_op_names"]) or "none",
            "NPU cycles (vela estimate)": str(v["cycles_total"]),
            "inference time (vela estimate, NPU ops only)": f"{v['inference_time_ms']:.4f} ms at "
                                                            f"{v['clock_hz'] / 1e6:.0f} MHz",
            "SRAM used (vela)": f"{v['sram_bytes']} bytes",
        })
    return firmware.Settings(
        profile=meta["board"]["name"],
        model_file=model_file,
        model_sha256=hashlib.sha256(model).hexdigest(),
        arena_bytes=fw["arena_bytes"],
        arena_note=fw["arena_note"],
        inputs=io["inputs"],
        outputs=io["outputs"],
        ops=ops.model_ops(model),
        npu=meta["board"].get("npu"),
        figures=figures,
        temperatures={name: c["temperature"] for name, c in (meta.get("confidence") or {}).items()},
    )


class TFLMTarget(Target):
    name = "tflm"
    consumes = ModelFormat.TORCH
    precisions = frozenset({Precision.INT8})
    Options = TFLMOptions
    tools = ("torch", "torchao", "litert-torch", "litert-converter", "ai-edge-litert", "tflite-micro", "ethos-u-vela")
    converter = "converts PyTorch models (litert-torch)"

    @classmethod
    def check_available(cls) -> None:
        require_packages(("tflite_micro", "ai_edge_litert"), EXTRA, "the tflm (mcu) target")
        # Only looked up: importing litert-torch takes seconds and prints torchao's CUDA warnings.
        for module, dist in (("torch", "torch"), ("litert_torch", "litert-torch")):
            if importlib.util.find_spec(module) is None:
                raise missing_dependency(dist, EXTRA, "the tflm (mcu) target")

    def __init__(self, options: TFLMOptions | None = None):
        super().__init__(options)
        opts = self.options
        self.board = board(opts.board)
        if not 0.0 <= float(opts.arena_margin) <= 4.0:
            raise ConfigError(f"arena_margin must be a fraction between 0 and 4, not {opts.arena_margin!r}",
                              hint="e.g. arena_margin: 0.1 for 10%")
        if self.board.npu and importlib.util.find_spec("ethosu") is None:
            raise TargetUnavailableError(
                f"the {self.board.name} profile needs the vela compiler (Python package 'ethos-u-vela'), "
                "which is not installed",
                hint=f"pip install 'edgec[{EXTRA}]' (or: make install)",
            )
        if opts.compile_check is True and not firmware.compiler_available():
            raise TargetUnavailableError(
                "compile_check needs arm-none-eabi-g++ and arm-none-eabi-size on PATH",
                hint="apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi, or set compile_check: auto",
            )

    def build(self, model: Any, precision: Precision, calibration: Any, out_dir: Path) -> list[Artifact]:
        from edgec.targets.litert import convert

        source = str(getattr(model, "source", "the model"))
        spec = fixed_spec(model.spec, source)
        b, opts = self.board, self.options
        out_dir = Path(out_dir)
        out = out_dir / "model.int8.tflite"
        result = convert(model.module, spec, Precision.INT8, out, calibration, channels_last_io=True, source=source,
                         int16_nodes=tuple(opts.int16_layers), int16_ops=ops.INT16_KERNELS)
        cpu_ops = ops.model_ops(out)
        self._check_full_integer(out, source, (result.info.get("quantization") or {}).get("method", ""))
        firmware.resolver_calls(cpu_ops)  # fails early, naming an op TFLM cannot register
        if not b.npu:
            check_fits(b, f"the INT8 model of '{source}'", out.stat().st_size, b.flash_bytes, "flash",
                       "make the model smaller (fewer or narrower layers, --prune), or use a profile with more flash")
        measured = arena_mod.measure(out, float(opts.arena_margin))
        meta: dict[str, Any] = {
            "runtime": "tflite-micro",
            "converter": f"litert-torch {version_of('litert-torch') or '?'}",
            "board": b.to_dict(),
            "io": {"inputs": [io.to_dict() for io in result.inputs],
                   "outputs": [io.to_dict() for io in result.outputs]},
            "ops": ops.unique_ops(cpu_ops),
            "batch": 1,
            "quantization": result.info.get("quantization"),
            "conversion_seconds": result.info.get("seconds"),
            "arena": measured.to_dict(),
        }
        if "dynamic_axes_fixed_at_1" in result.info:
            meta["dynamic_axes_fixed_at_1"] = result.info["dynamic_axes_fixed_at_1"]
        fw_model = out
        arena_bytes = measured.recorded_bytes
        arena_note = (f"measured: the model runs in {measured.minimum_bytes} bytes (tflite-micro on the host, "
                      f"bisected); + {opts.arena_margin:.0%}, rounded up to 16 bytes")
        if b.npu:
            report = self._vela(out, out_dir / "vela", source)
            fw_model = report.optimised
            npu = self._npu_arena(report.optimised, measured, float(opts.arena_margin))
            arena_bytes = npu["recorded_bytes"]
            arena_note = (f"the vela model's offline-planned tensors span {npu['offline_extent_bytes']} bytes, plus "
                          f"{npu['tflm_bytes']} bytes TFLM keeps for itself (measured on the CPU model); "
                          f"+ {opts.arena_margin:.0%}, rounded up to 16 bytes")
            meta["vela"] = {**report.to_dict(), "file": self.vela_name(), "sha256": sha256_file(report.optimised),
                            "options": self._vela_options()}
            meta["npu_arena"] = npu
            check_fits(b, f"the vela-compiled model of '{source}'", report.optimised_bytes, b.flash_bytes, "flash",
                       "make the model smaller (fewer or narrower layers, --prune), or use a profile with more flash")
        check_fits(b, f"the tensor arena of '{source}'", arena_bytes, b.ram_bytes, "RAM",
                   "shrink the activations (smaller input, fewer channels, earlier downsampling), or use a profile "
                   "with more RAM")
        fw_bytes = fw_model.read_bytes()
        meta["memory"] = {
            "model_bytes": len(fw_bytes), "flash_limit_bytes": b.flash_bytes,
            "arena_bytes": arena_bytes, "ram_limit_bytes": b.ram_bytes,
            "flash_used": round(len(fw_bytes) / b.flash_bytes, 4), "ram_used": round(arena_bytes / b.ram_bytes, 4),
        }
        meta["firmware"] = {
            "folder": firmware.FOLDER,
            "files": list(firmware.FILES),
            "model_file": fw_model.name if not b.npu else self.vela_name(),
            "arena_bytes": arena_bytes,
            "arena_note": arena_note,
        }
        settings = _settings(meta, meta["firmware"]["model_file"], fw_bytes)
        meta["firmware"]["resolver"] = firmware.resolver_calls(settings.ops)
        meta["firmware"]["compile"] = self._compile(out_dir / firmware.FOLDER, fw_bytes, settings)
        artifact_spec = InputSpec(spec.inputs, spec.outputs)
        return [Artifact(out, ModelFormat.TFLITE, Precision.INT8, self.name, artifact_spec, sha256_file(out), meta)]

    higher_precision = "int16 activations, int8 weights: TFLite 16x8"

    def keep_in_higher_precision(self, nodes: list[str]) -> TFLMTarget:
        """Full integer still: the layers get int16 activations (16x8) where TFLM has the kernel; a layer whose
        op has none fails its attempt, naming it."""
        layers = sorted({*self.options.int16_layers, *nodes})
        return type(self)(dataclasses.replace(self.options, int16_layers=layers))

    @staticmethod
    def vela_name() -> str:
        return "model.int8.vela.tflite"

    def _vela_options(self) -> dict[str, Any]:
        b, opts = self.board, self.options
        return {
            "accelerator": b.npu,
            "system_config": opts.vela_system_config or b.vela_system_config,
            "memory_mode": opts.vela_memory_mode or b.vela_memory_mode,
            "optimise": opts.vela_optimise,
            "config": opts.vela_config,
        }

    def _vela(self, model: Path, out_dir: Path, source: str) -> vela.VelaReport:
        report = vela.compile_model(model, out_dir, **self._vela_options())
        vela.judge(report, Path(source).name, bool(self.options.allow_cpu_fallback))
        return report

    @staticmethod
    def _npu_arena(optimised: Path, cpu: arena_mod.ArenaReport, margin: float) -> dict[str, Any]:
        """The arena of the vela model. TFLM on the host has no Ethos-U kernel, so it cannot be bisected: vela
        places its tensors at offline-planned offsets (the span is exact); TFLM's own allocations are taken from
        the CPU model's measurement, an upper bound (the vela model has fewer ops and tensors)."""
        extent = ops.offline_arena_extent(optimised) or 0
        tflm = cpu.persistent_bytes or cpu.minimum_bytes - cpu.planned_bytes
        estimate = extent + tflm
        return {
            "offline_extent_bytes": extent,
            "tflm_bytes": tflm,
            "estimate_bytes": estimate,
            "recorded_bytes": arena_mod.recorded(estimate, margin),
            "margin": margin,
            "method": "vela's offline-planned tensor span + TFLM's own allocations measured on the CPU model",
        }

    @staticmethod
    def _check_full_integer(path: Path, source: str, method: str) -> None:
        floats = ops.float_ops(path)
        if floats:
            listed = ", ".join(dict.fromkeys(floats))
            raise QuantizationError(
                f"the INT8 model of '{source}' still computes in float ({listed}): microcontroller builds are "
                "full-integer",
                hint=f"the quantizer ({method or 'PT2E'}) leaves these ops float; replace them with quantizable "
                     "layers (or build for --target arm, where float ops are fine)",
            )

    def _compile(self, folder: Path, model: bytes, settings: firmware.Settings) -> dict[str, Any]:
        firmware.write(folder, model, settings, self.board)
        if self.options.compile_check is False:
            return {"skipped": "compile_check is false"}
        if not firmware.compiler_available():
            return {"skipped": f"{firmware.CXX} is not on PATH (apt-get install gcc-arm-none-eabi "
                               "libnewlib-arm-none-eabi)"}
        return firmware.compile_sizes(folder, self.board, settings)

    def finish_folder(self, folder: Path, artifacts: list[Artifact]) -> list[Path]:
        """Write ``firmware/`` (and, for Ethos-U, the vela model) next to the profile's INT8 .tflite."""
        written: list[Path] = []
        for art in artifacts:
            if art.target != self.name:
                continue
            meta = art.metadata
            model_file = meta["firmware"]["model_file"]
            if meta.get("vela"):
                written.append(self._write_vela(Path(art.path), folder, meta["vela"]))
            fw_bytes = (folder / model_file).read_bytes()
            settings = _settings(meta, model_file, fw_bytes)
            written += firmware.write(folder / firmware.FOLDER, fw_bytes, settings, board(meta["board"]["name"]))
        return written

    @staticmethod
    def _write_vela(model: Path, folder: Path, recorded: dict[str, Any]) -> Path:
        """vela is deterministic: compile the artifact again into the folder and check it is the same file."""
        with tempfile.TemporaryDirectory(prefix="edgec-vela-") as tmp:
            report = vela.compile_model(model, Path(tmp), **recorded["options"])
            dest = folder / recorded["file"]
            dest.write_bytes(report.optimised.read_bytes())
        if sha256_file(dest) != recorded["sha256"]:
            raise TargetBuildError(
                f"vela compiled '{model.name}' differently from the build ({recorded['file']})",
                hint="the ethos-u-vela version changed since the build: rebuild with --no-cache",
            )
        return dest

    @classmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> TFLMRunner:
        from edgec.targets.litert import io_from_metadata

        cls.check_available()
        meta = artifact.metadata
        inputs, outputs = io_from_metadata(meta, artifact.path)
        if not meta.get("arena"):
            raise ConfigError(
                f"the manifest entry of '{artifact.path}' has no 'arena' record", hint="rebuild it with edgec build"
            )
        return TFLMRunner(Path(artifact.path), artifact.spec, inputs, outputs, int(meta["arena"]["recorded_bytes"]))
