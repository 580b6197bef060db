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


@dataclasses.dataclass(frozen=True)
class LayerScore:
    node: str
    op_type: str
    rel_error: float
    increase: float
    group: str = ""  # nodes of one structural role share it (see _role)

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
        increase = max(0.0, out - before)
        scores.append(LayerScore(node.name, node.op_type, round(out, 6), round(increase, 6), _role(ref, node)))
    return sorted(scores, key=lambda s: s.increase, reverse=True)


def _role(model: Any, node: Any) -> str:
    """A node's structural role: its op, its weight's shape and the op its activation comes from. The repeated
    blocks of a transformer share roles (every layer's FFN output projection reads a GELU, with the same weight
    shape), so one role is one "layer group" to keep in higher precision together."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weight = next((tuple(numpy_helper.to_array(inits[i]).shape) for i in node.input[1:2] if i in inits), ())
    source = producer.get(node.input[0]) if node.input else None
    while source is not None and source.op_type in _PLUMBING and source.input:
        source = producer.get(source.input[0])
    return f"{node.op_type} {'x'.join(map(str, weight)) or '-'} after {source.op_type if source else 'input'}"


def groups(ranking: Sequence[LayerScore]) -> list[list[str]]:
    """The ranked nodes gathered by role, the role adding the most error (summed) first."""
    by_role: dict[str, list[LayerScore]] = {}
    for score in ranking:
        by_role.setdefault(score.group, []).append(score)
    ordered = sorted(by_role.values(), key=lambda g: sum(s.increase for s in g), reverse=True)
    return [[s.node for s in g] for g in ordered]


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
    candidates: Sequence[list[str]], attempt: Callable[[list[str]], tuple[Verdict, Any]], probe_limit: int = 6,
    max_attempts: int = 8,
) -> tuple[Attempt | None, list[Attempt]]:
    """Find few layers to keep in higher precision so that ``attempt`` (build + verify with those kept) passes.

    ``candidates`` are layer groups, worst first. With few groups (a transformer's roles) each is first kept
    alone, in order, until one passes; otherwise the groups are re-ordered by the drop each left (the measured
    effect on the task metric, not the layer-wise error, decides) and added in that order until an attempt
    passes. Returns the passing
    attempt (None when none passed within ``max_attempts``) and every attempt, in order.
    """
    tried: list[Attempt] = []

    def run(keep: list[str]) -> Attempt:
        verdict, outcome = attempt(keep)
        tried.append(Attempt(list(keep), verdict, outcome))
        return tried[-1]

    order = list(candidates)
    if 1 < len(order) <= probe_limit:
        probes = []
        for group in order:
            probes.append(run(group))
            if probes[-1].verdict.passed:
                return probes[-1], tried
        order = [g for _, g in sorted(zip(probes, order), key=lambda pair: _drop(pair[0].verdict))]
    keep: list[str] = []
    for count, group in enumerate(order, start=1):
        keep = [*keep, *group]
        if count == 1 and tried and tried[0].kept == keep:
            continue  # already tried alone
        if len(tried) >= max_attempts:
            break
        result = run(keep)
        if result.verdict.passed:
            return result, tried
    return None, tried


def _drop(verdict: Verdict) -> float:
    return max((m.drop for m in verdict.metrics.values()), default=0.0)
