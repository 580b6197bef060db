"""TargetStage: one target's build of one precision, as a cacheable stage.

It knows targets only by the shape of their interface (``reads``, ``build``, ``name``, ``options``), so the
compiler core stays free of any backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgec.compiler.context import BuildContext
from edgec.compiler.stage import Stage
from edgec.compiler.types import Artifact, Precision


class TargetStage(Stage):
    name = "target"

    def __init__(self, target: Any, folder: str, precision: Precision, source: str = "model", variant: str = ""):
        self.target = target
        self.folder = folder
        self.precision = precision
        self.source = source
        # A torch-consuming target reads the model after pruning/distillation (``source``), not the loaded one.
        self.reads = tuple(source if value == "model" else value for value in target.reads(precision))
        # A variant (the accuracy fallback's rebuild with other options) writes a value of its own.
        self.writes = f"artifacts:{folder}/{precision.value}" + (f"#{variant}" if variant else "")
        self.variant = variant
        self.tools = tuple(getattr(target, "tools", ()))

    @property
    def label(self) -> str:
        return f"{self.folder}/{self.precision.value}" + (f" ({self.variant})" if self.variant else "")

    def options(self) -> dict[str, Any]:
        opts = self.target.options
        return {
            "backend": self.target.name,
            "precision": self.precision.value,
            "options": dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else dict(opts or {}),
        }

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> list[Artifact]:
        model = inputs[self.reads[0]]
        calibration = inputs[self.reads[1]] if len(self.reads) > 1 else None
        if len(self.reads) > 2:  # the raw calibration samples besides the statistics (see Target.reads)
            return self.target.build(model, self.precision, calibration, out_dir, samples=inputs[self.reads[2]])
        return self.target.build(model, self.precision, calibration, out_dir)

    def save(self, value: list[Artifact], out_dir: Path) -> dict[str, Any]:
        return {"artifacts": [a.to_dict(root=out_dir) for a in value]}

    def restore(self, result: dict[str, Any], files: Path) -> list[Artifact]:
        return [Artifact.from_dict(d, root=files) for d in result["artifacts"]]

    def summary(self, value: list[Artifact]) -> dict[str, Any]:
        return {"artifacts": [a.path.name for a in value]}
