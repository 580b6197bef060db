"""Which layers break an INT8 model, and the fewest to keep in higher precision until the budget holds.

Sensitivity is measured once per build, on the ONNX graph: a fully quantized QDQ model of the FP32 export runs
beside the FP32 model with every intermediate tensor exposed (``edgec.benchmarks.compare.layer_errors``, what
``edgec compare`` shows), and each node is scored by the error it adds (its output's relative error minus its
inputs'). Each target then keeps the top of that ranking in higher precision its own way (float nodes for ONNX
Runtime and TensorRT, float modules for TFLite), trying 1, 2, 4, ... layers until its artifact is within budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgec.benchmarks.compare import _PLUMBING
from edgec.benchmarks.verify import Verdict
from edgec.compiler.types import Feeds

#: At most this many held-out samples feed the layer-by-layer run (every tensor of both graphs is kept).
SAMPLES = 8
#: Layers adding less relative error than this are not worth keeping in higher precision.
MIN_INCREASE = 1e-3


@dataclasses.dataclass(frozen=True)
class LayerScore:
    node: str
    op_type: str
    rel_error: float
    increase: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rank_layers(fp32: Path, quantized: Path, samples: Sequence[Feeds]) -> list[LayerScore]:
    """The quantized nodes of ``quantized`` (a QDQ or dynamically quantized model of ``fp32``) by the error that
    quantizing each adds, worst first.

    Both models run with every float tensor exposed, and each tensor's relative error is taken on the tensor
    itself, before any QuantizeLinear that reads it: the rounding of a node's inputs and weights then shows at
    that node's output and not at the producer of its inputs, so the node named is the one whose Q/DQ to drop.
    A node counts as quantized when it reads a DequantizeLinear output, or when the quantizer replaced it
    (dynamic quantization's MatMulInteger keeps the output name, not the node).
    """
    import onnx

    ref = onnx.load(str(fp32))
    cand = onnx.load(str(quantized))
    errors = tensor_errors(ref, cand, list(samples[:SAMPLES]))
    dq_outputs = {o for n in cand.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    cand_nodes = {n.name: n for n in cand.graph.node}
    scores = []
    for node in ref.graph.node:
        if node.op_type in _PLUMBING:
            continue
        twin = cand_nodes.get(node.name)
        replaced = twin is None and node.op_type in ("MatMul", "Gemm", "Conv")
        if not (replaced or (twin is not None and any(i in dq_outputs for i in twin.input))):
            continue
        out = errors.get(node.output[0])
        if out is None:
            continue
        before = max([errors.get(i, 0.0) for i in node.input] or [0.0])
        increase = out - before
        if increase >= MIN_INCREASE:
            scores.append(LayerScore(node.name, node.op_type, round(out, 6), round(increase, 6)))
    return sorted(scores, key=lambda s: s.increase, reverse=True)


def tensor_errors(ref: Any, cand: Any, samples: list[Feeds]) -> dict[str, float]:
    """Relative RMS error of every float tensor both models produce under the same name, over ``samples``."""
    import math
    import tempfile

    import numpy as np

    from edgec.benchmarks.compare import _expose, _float_tensors
    from edgec.compiler.onnxutil import ort_session

    ref_types, cand_types = _float_tensors(ref), _float_tensors(cand)
    shared = [name for name in ref_types if name in cand_types]
    sums = {name: [0.0, 0.0] for name in shared}
    with tempfile.TemporaryDirectory(prefix="edgec-sensitivity-") as tmp:
        ref_file, cand_file = Path(tmp) / "reference.onnx", Path(tmp) / "candidate.onnx"
        _expose(ref, shared, ref_types, ref_file)
        _expose(cand, shared, cand_types, cand_file)
        ref_sess, cand_sess = ort_session(ref_file, level="basic"), ort_session(cand_file, level="basic")
        names = [i.name for i in ref_sess.get_inputs()]
        for feeds in samples:
            f = {n: np.asarray(feeds[n]) for n in names}
            for name, a, b in zip(shared, ref_sess.run(shared, f), cand_sess.run(shared, f)):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if a.shape == b.shape:
                    sums[name][0] += float(np.sum(a * a))
                    sums[name][1] += float(np.sum((a - b) ** 2))
    return {name: (math.sqrt(noise / signal) if signal > 0 else 0.0) for name, (signal, noise) in sums.items()}


@dataclasses.dataclass
class Attempt:
    kept: list[str]
    verdict: Verdict
    outcome: Any = None  # what the caller built (the artifacts), returned with the passing attempt

    def to_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept), "passed": self.verdict.passed, "breaches": list(self.verdict.breaches)}


def search(
    ranking: Sequence[str], attempt: Callable[[list[str]], tuple[Verdict, Any]], max_attempts: int = 6
) -> tuple[Attempt | None, list[Attempt]]:
    """Keep the top 1, 2, 4, ... of ``ranking`` in higher precision (``attempt`` builds and verifies that) until
    an artifact passes; then, between the last failing count and the passing one, the fewest that pass.

    Returns the passing attempt (None when even the whole ranking fails, or ``max_attempts`` ran out) and every
    attempt made, in order.
    """
    tried: list[Attempt] = []

    def run(k: int) -> Attempt:
        verdict, outcome = attempt(list(ranking[:k]))
        tried.append(Attempt(list(ranking[:k]), verdict, outcome))
        return tried[-1]

    low, k, found = 0, 1, None
    while k <= len(ranking) and len(tried) < max_attempts:
        result = run(k)
        if result.verdict.passed:
            found = result
            break
        low, k = k, (k * 2 if k * 2 <= len(ranking) or k == len(ranking) else len(ranking))
    if found is None:
        return None, tried
    high = len(found.kept)
    while high - low > 1 and len(tried) < max_attempts + 3:
        mid = (low + high) // 2
        result = run(mid)
        if result.verdict.passed:
            found, high = result, mid
        else:
            low = mid
    return found, tried
