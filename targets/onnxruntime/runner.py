"""Runs an ONNX file with ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgec.compiler.errors import missing_dependency
from edgec.compiler.onnxutil import ort_session
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import Feeds, InputSpec
from edgec.targets.base import Runner


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: Path, threads: int | None = None, optimization: str = "all"):
        self.path = Path(path)
        self.threads = threads or 0  # 0 lets ONNX Runtime pick
        self.optimization = optimization
        self.session: Any = None

    def load(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", "running ONNX artifacts") from None
        self.runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
        self.session = ort_session(self.path, threads=self.threads, level=self.optimization)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def input_specs(self) -> InputSpec:
        import onnx

        return onnx_spec(onnx.load(str(self.path), load_external_data=False))

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))
