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
from edgec.compiler.onnxutil import ACTIVATION_OPS as _FUSED_ACTIVATIONS
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

    Both models run with every float tensor exposed. A node's score is the error of its output as the next
    layer reads it (after its output's Q/DQ) minus the error of its inputs taken before their Q/DQ: the rounding
    of its inputs, weights and output, so the node named is the one whose Q/DQ to drop.
    A node counts as quantized when it reads a DequantizeLinear output, or when the quantizer replaced it
    (dynamic quantization's MatMulInteger keeps the output name, not the node).
    """
    import onnx

    ref = onnx.load(str(fp32))
    cand = onnx.load(str(quantized))
    errors, as_read = tensor_errors(ref, cand, list(samples[:SAMPLES]))
    dq_outputs = {o for n in cand.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    cand_nodes = {n.name: n for n in cand.graph.node}
    consumers: dict[str, list[Any]] = {}
    for n in ref.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def effective(tensor: str) -> str | None:
        """The tensor a node's output shows in: itself, or, when the quantizer fused the activation after it
        (Conv + Relu become one QDQ Conv), the output of that activation."""
        while tensor not in errors:
            users = consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in _FUSED_ACTIVATIONS:
                return None
            tensor = users[0].output[0]
        return tensor

    scores = []
    for node in ref.graph.node:
        if node.op_type in _PLUMBING or node.op_type in _FUSED_ACTIVATIONS:
            continue  # an activation's rounding belongs to the layer before it (quantizers fuse the pair)
        twin = cand_nodes.get(node.name)
        replaced = twin is None and node.op_type in ("MatMul", "Gemm", "Conv")
        if not (replaced or (twin is not None and any(i in dq_outputs for i in twin.input))):
            continue
        shown = effective(node.output[0])
        if shown is None:
            continue
        out = as_read[shown]
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


def tensor_errors(ref: Any, cand: Any, samples: list[Feeds]) -> tuple[dict[str, float], dict[str, float]]:
    """Relative RMS error of every float tensor both models produce under the same name, over ``samples``: as
    the tensor itself (before any QuantizeLinear reading it), and as its consumers read it (after the
    QuantizeLinear/DequantizeLinear pair, which also applies a ReLU the quantizer folded into the rounding)."""
    import math
    import tempfile

    import numpy as np

    from edgec.benchmarks.compare import _as_consumed, _float_tensors
    from edgec.compiler.onnxutil import expose_outputs, ort_session

    ref_types, cand_types = _float_tensors(ref), _float_tensors(cand)
    shared = [name for name in ref_types if name in cand_types]
    read_as = _as_consumed(cand)
    consumed = [read_as.get(name, name) for name in shared]
    wanted = list(dict.fromkeys([*shared, *consumed]))
    sums = {name: [0.0, 0.0, 0.0] for name in shared}  # signal, raw noise, consumed noise
    with tempfile.TemporaryDirectory(prefix="edgec-sensitivity-") as tmp:
        ref_file, cand_file = Path(tmp) / "reference.onnx", Path(tmp) / "candidate.onnx"
        expose_outputs(ref, shared, ref_file, ref_types)
        expose_outputs(cand, wanted, cand_file, {n: cand_types.get(n, ref_types.get(n)) for n in wanted})
        ref_sess, cand_sess = ort_session(ref_file, level="basic"), ort_session(cand_file, level="basic")
        names = [i.name for i in ref_sess.get_inputs()]
        for feeds in samples:
            f = {n: np.asarray(feeds[n]) for n in names}
            got = dict(zip(wanted, cand_sess.run(wanted, f)))
            for name, as_read, a in zip(shared, consumed, ref_sess.run(shared, f)):
                a = np.asarray(a, np.float64)
                raw, read = np.asarray(got[name], np.float64), np.asarray(got[as_read], np.float64)
                if a.shape == raw.shape == read.shape:
                    sums[name][0] += float(np.sum(a * a))
                    sums[name][1] += float(np.sum((a - raw) ** 2))
                    sums[name][2] += float(np.sum((a - read) ** 2))

    def rel(signal: float, noise: float) -> float:
        return math.sqrt(noise / signal) if signal > 0 else 0.0

    return ({n: rel(v[0], v[1]) for n, v in sums.items()}, {n: rel(v[0], v[2]) for n, v in sums.items()})


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
    effect on the task metric, not the layer-wise error, decides). Then the first 1, 2, 4, ... groups are kept
    together until an attempt passes. Returns the passing
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
    # Keep the first 1, 2, 4, ... groups (of the re-ordered list when probed), then all of them.
    counts = sorted({*(2 ** k for k in range(len(order).bit_length()) if 2 ** k < len(order)), len(order)})
    for count in counts:
        keep = [node for group in order[:count] for node in group]
        if any(a.kept == keep for a in tried):
            continue
        if len(tried) >= max_attempts:
            break
        result = run(keep)
        if result.verdict.passed:
            return result, tried
    return None, tried


def _drop(verdict: Verdict) -> float:
    """The worst drop an attempt left; infinite for one that did not build (no figures)."""
    return max((m.drop for m in verdict.metrics.values()), default=float("inf"))
