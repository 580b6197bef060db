"""What TensorRT's ONNX parser would refuse, per node: a known list, and the tensorrt-rtx parser when installed.

The known list is onnx-tensorrt's operator matrix (docs/operators.md, TensorRT 10.15, opsets 9-24): the ops it
marks unsupported, plus any op outside the default ONNX domain (TensorRT needs a plugin for those).
``tensorrt-rtx`` (PyPI, runs without a GPU) parses the file with its own ONNX parser: a different product from
TensorRT, so its verdict is a hint, recorded but never a reason to fail the build on its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

#: Ops onnx-tensorrt's operator matrix marks "N" (TensorRT 10.15).
UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "CenterCropPad",
    "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
MAX_OPSET = 24
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Finding:
    node: str
    op_type: str
    message: str
    source: str  # "known-list" or "tensorrt-rtx <version>"

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op_type}): {self.message}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def unsupported_nodes(model: Any) -> list[Finding]:
    """Nodes of ``model`` (a ModelProto or a path) whose op TensorRT's ONNX parser does not support."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    found = []
    for i, node in enumerate(model.graph.node):
        label = node.name or f"{node.op_type}#{i}"
        if node.domain not in DEFAULT_DOMAINS:
            found.append(Finding(label, f"{node.domain}.{node.op_type}",
                                 f"op from domain '{node.domain}': TensorRT needs a plugin for it", "known-list"))
        elif node.op_type in UNSUPPORTED_OPS:
            found.append(Finding(label, node.op_type, "not supported by TensorRT's ONNX parser", "known-list"))
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    if opset > MAX_OPSET:
        found.append(Finding("", "", f"opset {opset} is newer than TensorRT's parser supports ({MAX_OPSET})",
                             "known-list"))
    return found


def rtx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt_rtx") is not None


def rtx_lint(path: Path) -> tuple[str, list[Finding]]:
    """(tensorrt-rtx version, what its ONNX parser rejects in ``path``). Needs tensorrt-rtx; no GPU needed."""
    import tensorrt_rtx as rtx

    class _Collect(rtx.ILogger):
        def __init__(self) -> None:
            rtx.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (rtx.ILogger.ERROR, rtx.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    logger = _Collect()
    builder = rtx.Builder(logger)
    network = builder.create_network(0)
    parser = rtx.OnnxParser(network, logger)
    version = f"tensorrt-rtx {rtx.__version__}"
    ok = parser.parse(Path(path).read_bytes(), str(path))
    findings = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = err.desc()
        message = "rejected by the parser" if desc.strip() in ("", "false") else " ".join(desc.split())
        findings.append(Finding(err.node_name() or f"#{err.node()}", err.node_operator(), message, version))
    if not ok and not findings:
        findings.append(Finding("", "", "; ".join(logger.errors[-3:]) or "the parser failed", version))
    return version, findings


def lint(path: Path, use_rtx: bool = True) -> dict[str, Any]:
    """Both checks on one ONNX file, as the artifact metadata records them."""
    report: dict[str, Any] = {"unsupported": [f.to_dict() for f in unsupported_nodes(path)]}
    if use_rtx and rtx_available():
        try:
            version, findings = rtx_lint(path)
        except Exception as exc:  # a lint that cannot run is reported, not fatal: it is a hint
            report["rtx"] = {"ran": False, "why": f"{type(exc).__name__}: {exc}"}
        else:
            report["rtx"] = {"ran": True, "version": version, "rejected": [f.to_dict() for f in findings]}
    else:
        report["rtx"] = {"ran": False, "why": "tensorrt-rtx is not installed (optional: pip install 'edgec[trt-lint]')"}
    return report
