"""A Runner over an ONNX Runtime CPU session, shared by the backends that run ONNX files on the host.

Not a target: the onnxruntime target runs its artifacts with it, and the tensorrt target its off-device estimates
(no target imports another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgec.compiler.errors import missing_dependency
from edgec.compiler.onnxutil import ort_session
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import Feeds, InputSpec
from edgec.targets.base import Runner


class OnnxSessionRunner(Runner):
    #: What running needs onnxruntime for, in the message when it is missing.
    purpose = "running ONNX artifacts"

    def __init__(self, path: Path, threads: int | None = None, optimization: str = "all"):
        self.path = Path(path)
        self.threads = threads or 0  # 0 lets ONNX Runtime pick
        self.optimization = optimization
        self.session: Any = None

    def describe(self, version: str) -> str:
        """The runtime string the results show."""
        return f"onnxruntime {version} (CPUExecutionProvider)"

    def load(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise missing_dependency("onnxruntime", "onnx", self.purpose) from None
        self.runtime = self.describe(onnxruntime.__version__)
        self.session = ort_session(self.path, threads=self.threads, level=self.optimization)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.session = None

    def input_specs(self) -> InputSpec:
        import onnx

        return onnx_spec(onnx.load(str(self.path), load_external_data=False))

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def call(self, feeds: Feeds) -> Any:
        # naming the outputs costs about 2 us a call, 6% of a 30 us model: left outside the clock
        return self.session.run(self._outputs, feeds)
