"""ExecuTorchTarget: ExecuTorch programs (.pte) from the torch model, lowered to XNNPACK (FP32, FP16, INT8
through ExecuTorch's XNNPACKQuantizer), for Arm Cortex-A and x86 CPUs running ExecuTorch."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError, TargetUnavailableError, missing_dependency
from edgec.compiler.types import Artifact, InputSpec, ModelFormat, Precision, sha256_file
from edgec.compiler.versions import version_of
from edgec.targets.base import Target
from edgec.targets.executorch.lower import OBSERVERS, PteIO, lower
from edgec.targets.executorch.runner import ExecuTorchRunner


@dataclasses.dataclass
class ExecuTorchOptions:
    observer: str = dataclasses.field(
        default="histogram",
        metadata={
            "help": "INT8 activation range observer: histogram (ExecuTorch's default for XNNPACK) or minmax",
            "choices": OBSERVERS,
        },
    )
    per_channel: bool = dataclasses.field(default=True, metadata={"help": "int8 weights per output channel"})
    bundle_samples: int = dataclasses.field(
        default=4,
        metadata={
            "help": "test cases (calibration samples and the host runtime's outputs) in the bundled program "
            "model.<precision>.bpte written beside each .pte, for a self-check on the device; 0 writes none"
        },
    )


class ExecuTorchTarget(Target):
    name = "executorch"
    consumes = ModelFormat.TORCH
    precisions = frozenset({Precision.FP32, Precision.FP16, Precision.INT8})
    Options = ExecuTorchOptions
    tools = ("torch", "torchao", "executorch")
    converter = "lowers PyTorch models (torch.export, ExecuTorch)"

    @classmethod
    def check_available(cls) -> None:
        # Only looked up: importing executorch takes ~10 s (it loads torch and torchao).
        for module, dist in (("torch", "torch"), ("torchao", "torchao"), ("executorch", "executorch")):
            if importlib.util.find_spec(module) is None:
                raise missing_dependency(dist, "executorch", "the executorch target")

    def reads(self, precision: Precision) -> tuple[str, ...]:
        # Every precision reads the calibration set (None without --calib): its first samples check the program
        # against torch and become the bundled program's test inputs.
        return ("model", "calibration")

    def build(self, model: Any, precision: Precision, calibration: Any, out_dir: Path) -> list[Artifact]:
        if self.options.bundle_samples < 0:
            raise ConfigError(f"bundle_samples must be 0 or more, not {self.options.bundle_samples}")
        out = Path(out_dir) / f"model.{precision.value}.pte"
        opts = self.options
        result = lower(
            model.module, model.spec, precision, out, calibration, observer=opts.observer,
            per_channel=opts.per_channel, bundle_samples=opts.bundle_samples, source=str(model.source),
        )
        meta: dict[str, Any] = {
            "runtime": "executorch (XNNPACK)",
            "converter": f"executorch {version_of('executorch') or '?'}",
            "io": {
                "inputs": [io.to_dict() for io in result.inputs],
                "outputs": [io.to_dict() for io in result.outputs],
            },
            **result.info,
        }
        if result.bundle is not None:
            meta["bundle"] = {
                "file": result.bundle.name,
                "test_cases": result.info["check"]["samples"],
                "expected": "this host's ExecuTorch outputs for the test inputs (calibration samples)",
                "sha256": sha256_file(result.bundle),
            }
            meta["companions"] = [result.bundle.name]
        spec = InputSpec(model.spec.inputs, model.spec.outputs)
        return [Artifact(out, ModelFormat.PTE, precision, self.name, spec, sha256_file(out), meta)]

    @classmethod
    def open(cls, artifact: Artifact, threads: int | None = None) -> ExecuTorchRunner:
        io = artifact.metadata.get("io") or {}
        if not io.get("inputs"):
            raise ConfigError(
                f"the manifest entry of '{artifact.path}' has no 'io' record", hint="rebuild it with edgec build"
            )
        if importlib.util.find_spec("executorch") is None:
            raise TargetUnavailableError(
                "running .pte artifacts needs ExecuTorch's runtime (the Python package 'executorch'), which is "
                "not installed",
                hint="pip install 'edgec[executorch]' (or: pip install executorch==1.5.1)",
            )
        return ExecuTorchRunner(
            Path(artifact.path), artifact.spec, [PteIO.from_dict(d) for d in io["inputs"]],
            [PteIO.from_dict(d) for d in io["outputs"]], threads,
        )
