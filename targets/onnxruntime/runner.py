"""Runs an ONNX file with ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from edgec.targets.onnxsession import OnnxSessionRunner


class OnnxRuntimeRunner(OnnxSessionRunner):
    """The onnxruntime target's artifacts, on the runtime they were built for."""
