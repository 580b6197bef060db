"""Cross-runtime comparison: the same inputs through the reference and every artifact, and where a
reduced-precision artifact's error first jumps, layer by layer.

``compare_runtimes`` gives an N-way view: each artifact against the reference per output, and every pair of
(reference, artifacts) for top-1 agreement. ``layer_errors`` runs an FP32 ONNX model and a candidate built from it
(INT8 QDQ, FP16) side by side with every shared intermediate tensor exposed, and finds the first node whose
output error is much larger than the error at its inputs: the layer to keep in higher precision.
``runtime_layer_errors`` does the same for any other format whose runner reads its intermediate tensors
(``Runner.layer_outputs``: the .tflite files of the arm and mcu targets), pairing the tensors of the two files
with ``match_layers``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgec.benchmarks.accuracy import AccuracyReport, compare_outputs
from edgec.benchmarks.report import MISSING, aligned_lines, num_cell
from edgec.compiler.context import track
from edgec.compiler.errors import ConfigError
from edgec.compiler.types import Artifact, Feeds, LayerOutput, ModelFormat

Outputs = dict[str, np.ndarray]

#: A node's error "jumps" when its output's relative error is this many times its inputs' ...
JUMP_RATIO = 2.0
#: ... and grows by at least this much (relative RMS error, 0.05 = 5% of the signal; INT8 rounding adds 1-3% per layer).
JUMP_MIN_INCREASE = 0.05


@dataclasses.dataclass
class LayerError:
    """One node of the FP32 graph (one op of the candidate file, for formats read through their runner): the
    relative RMS error of its output in the candidate, and at its inputs."""

    node: str
    op_type: str
    output: str
    rel_error: float  # sqrt(sum((cand - ref)^2) / sum(ref^2)) over the samples
    input_rel_error: float  # the largest rel_error among its inputs (0 for graph inputs and weights)
    snr_db: float
    #: Nodes just before it whose outputs the candidate lacks (a Conv whose ReLU the quantizer folded into its
    #: output rounding): the error shown here is theirs too.
    fused_with: list[str] = dataclasses.field(default_factory=list)
    #: The source module the op comes from, when the file's tensor names tell (``layer1.0.conv (Conv2d)``).
    module: str | None = None
    #: How the candidate's tensor was paired with the reference's ("name" / "position"), and the latter's
    #: name; None for ONNX, whose graphs share tensor names.
    matched_by: str | None = None
    reference_output: str | None = None

    @property
    def where(self) -> str:
        """The node as a user would look for it: ``'conv' (Conv) + 'relu' (Relu)``, or
        ``'op 2' (CONV_2D) in module layer1.conv (Conv2d)``."""
        named = " + ".join([*self.fused_with, f"'{self.node}' ({self.op_type})"])
        return f"{named} in module {self.module}" if self.module else named

    @property
    def increase(self) -> float:
        return self.rel_error - self.input_rel_error

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "increase": self.increase}


@dataclasses.dataclass
class LayerReport:
    """Layer-by-layer errors of one candidate ONNX artifact against the FP32 ONNX model it was built from."""

    artifact: str
    reference: str
    samples: int
    layers: list[LayerError]  # in topological order of the FP32 graph
    first_jump: LayerError | None
    jump_ratio: float
    jump_min_increase: float

    def worst(self, k: int = 5) -> list[LayerError]:
        return sorted(self.layers, key=lambda e: e.increase, reverse=True)[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "reference": self.reference,
            "samples": self.samples,
            "jump_ratio": self.jump_ratio,
            "jump_min_increase": self.jump_min_increase,
            "first_jump": self.first_jump.to_dict() if self.first_jump else None,
            "worst": [e.to_dict() for e in self.worst()],
            "layers": [e.to_dict() for e in self.layers],
        }


@dataclasses.dataclass
class Comparison:
    """The result of ``edgec compare``."""

    reference: str
    samples: int
    runtimes: dict[str, str]  # artifact name -> runtime that ran it
    reports: dict[str, AccuracyReport]  # artifact name -> its outputs against the reference
    pairwise: dict[str, dict[str, float | None]]  # name -> name -> top-1 agreement % of the primary output
    primary_output: str | None
    layers: dict[str, LayerReport] = dataclasses.field(default_factory=dict)
    skipped_layers: dict[str, str] = dataclasses.field(default_factory=dict)  # artifact -> why no layer report

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "edgec-compare/1",
            "reference": self.reference,
            "samples": self.samples,
            "runtimes": dict(self.runtimes),
            "artifacts": {name: r.to_dict() for name, r in self.reports.items()},
            "primary_output": self.primary_output,
            "pairwise_top1_agreement": self.pairwise,
            "layers": {name: r.to_dict() for name, r in self.layers.items()},
            "layers_skipped": dict(self.skipped_layers),
        }


def _primary_output(outputs: Outputs) -> str | None:
    for name, arr in outputs.items():
        if arr.ndim >= 1 and arr.shape[-1] > 1 and np.issubdtype(arr.dtype, np.floating):
            return name
    return None


def pairwise_agreement(named_outputs: Mapping[str, list[Outputs]], output: str) -> dict[str, dict[str, float | None]]:
    """Top-1 agreement (%) of ``output`` between every pair of runs (by name); None where a run lacks it."""
    tops = {}
    for name, outs in named_outputs.items():
        if all(output in o for o in outs):
            tops[name] = np.concatenate([np.argmax(np.asarray(o[output]), axis=-1).ravel() for o in outs])
    table: dict[str, dict[str, float | None]] = {}
    for a in named_outputs:
        table[a] = {}
        for b in named_outputs:
            if a in tops and b in tops and tops[a].shape == tops[b].shape:
                table[a][b] = float(np.mean(tops[a] == tops[b]) * 100.0)
            else:
                table[a][b] = None
    return table


def compare_runtimes(
    artifacts: list[Artifact],
    outputs: Mapping[str, list[Outputs]],
    runtimes: Mapping[str, str],
    reference_outputs: list[Outputs],
    reference_name: str,
    labels: Any = None,
) -> Comparison:
    """Each artifact's outputs (by artifact name, per sample, already named like the reference's) against the
    reference's, and the pairwise agreement of all of them."""
    from edgec.benchmarks.harness import artifact_tasks

    reports = {
        a.name: compare_outputs(reference_outputs, outputs[a.name], labels=labels, reference_name=reference_name,
                                tasks=artifact_tasks(a))
        for a in artifacts
    }
    primary = _primary_output(reference_outputs[0])
    everything = {reference_name: reference_outputs, **{a.name: outputs[a.name] for a in artifacts}}
    pairwise = pairwise_agreement(everything, primary) if primary else {}
    return Comparison(
        reference=reference_name, samples=len(reference_outputs), runtimes=dict(runtimes), reports=reports,
        pairwise=pairwise, primary_output=primary,
    )


# ---------------------------------------------------------------------------------------------------------------
# Layer by layer.


def _float_tensors(model: Any) -> dict[str, int]:
    """Name -> ONNX elem type of every float tensor a node produces (types from shape inference)."""
    import onnx
    from onnx import TensorProto

    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: without it only the graph outputs have known types
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    produced = {out for node in model.graph.node for out in node.output if out}
    return {name: t for name, t in types.items() if name in produced and t in floating}


def _as_consumed(model: Any) -> dict[str, str]:
    """Tensor -> the tensor its consumers really read: in a QDQ graph, a float tensor that only feeds a
    QuantizeLinear is read through the DequantizeLinear after it (and the quantizer may have folded a ReLU
    into that rounding: the float tensor itself still holds the pre-ReLU values)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    seen = {}
    for node in model.graph.node:
        for out in node.output:
            users = consumers.get(out, [])
            if out in graph_outputs or len(users) != 1 or users[0].op_type != "QuantizeLinear":
                continue
            dq = [n for n in consumers.get(users[0].output[0], []) if n.op_type == "DequantizeLinear"]
            if dq:
                seen[out] = dq[0].output[0]
    return seen


#: Nodes that move or cast data rather than compute: not worth naming as where an error comes from.
_PLUMBING = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Constant",
                       "QuantizeLinear", "DequantizeLinear"})


def layer_errors(
    reference_path: Path,
    candidate_path: Path,
    samples: list[Feeds],
    *,
    artifact: str = "",
    reference: str = "",
    jump_ratio: float = JUMP_RATIO,
    jump_min_increase: float = JUMP_MIN_INCREASE,
) -> LayerReport:
    """Relative error of every intermediate tensor the two ONNX models share, and the first node where it jumps.

    Both models run on ONNX Runtime at the basic optimisation level with the shared tensors as extra outputs,
    so INT8 QDQ nodes run as quantize-dequantize in float: the same rounding as the fused kernels, up to one
    step. Samples are fed one at a time and only sums are kept, so memory stays at one sample's activations.
    """
    import onnx

    from edgec.compiler.onnxutil import expose_outputs, ort_session, topological_sort

    if not samples:
        raise ConfigError("no samples for the layer-by-layer comparison")
    ref_model = onnx.load(str(reference_path))
    cand_model = onnx.load(str(candidate_path))
    topological_sort(ref_model)
    ref_types = _float_tensors(ref_model)
    cand_types = _float_tensors(cand_model)
    shared = [
        out for node in ref_model.graph.node for out in node.output if out in ref_types and out in cand_types
    ]
    read_as = _as_consumed(cand_model)
    cand_names = [read_as.get(name, name) for name in shared]
    sums = {name: [0.0, 0.0] for name in shared}  # signal, noise
    with tempfile.TemporaryDirectory(prefix="edgec-layers-") as tmp:
        ref_file, cand_file = Path(tmp) / "reference.onnx", Path(tmp) / "candidate.onnx"
        expose_outputs(ref_model, shared, ref_file, ref_types)
        expose_outputs(cand_model, cand_names, cand_file,
                       {c: cand_types.get(c, cand_types[s]) for s, c in zip(shared, cand_names)})
        ref_sess = ort_session(ref_file, level="basic")
        cand_sess = ort_session(cand_file, level="basic")
        ref_inputs = [i.name for i in ref_sess.get_inputs()]
        cand_inputs = {i.name: i.type for i in cand_sess.get_inputs()}
        for feeds in samples:
            ref_feeds = {n: np.asarray(feeds[n]) for n in ref_inputs}
            cand_feeds = {
                n: (v.astype(np.float16) if cand_inputs.get(n) == "tensor(float16)" else v)
                for n, v in ref_feeds.items() if n in cand_inputs
            }
            r = dict(zip(shared, ref_sess.run(shared, ref_feeds)))
            c = dict(zip(shared, cand_sess.run(cand_names, cand_feeds)))
            for name in shared:
                a = np.asarray(r[name], np.float64)
                b = np.asarray(c[name], np.float64)
                if a.shape != b.shape:
                    continue
                finite = np.isfinite(a) & np.isfinite(b)
                sums[name][0] += float(np.sum(a[finite] ** 2))
                sums[name][1] += float(np.sum((a[finite] - b[finite]) ** 2))

    def rel(name: str) -> float:
        return _relative(*sums.get(name, (0.0, 0.0)))

    # A tensor the candidate lacks (a Conv output whose ReLU the quantizer folded) carries the error of the
    # nearest tensors upstream of it that both graphs have, so a node's input error is never understated as 0.
    tracked = set(shared)
    upstream: dict[str, float] = {}
    for node in ref_model.graph.node:
        in_err = max([upstream.get(i, 0.0) for i in node.input] or [0.0])
        for out in node.output:
            upstream[out] = rel(out) if out in tracked else in_err
    producer = {out: node for node in ref_model.graph.node for out in node.output}
    layers: list[LayerError] = []
    for node in ref_model.graph.node:
        for out in node.output:
            if out not in tracked:
                continue
            signal, noise = sums[out]
            in_err = max([upstream.get(i, 0.0) for i in node.input] or [0.0])
            err = rel(out)
            snr = _snr(signal, noise)
            fused = [
                f"'{producer[i].name}' ({producer[i].op_type})"
                for i in node.input if i in producer and i not in tracked and producer[i].op_type not in _PLUMBING
            ]
            layers.append(LayerError(node.name or out, node.op_type, out, err, in_err, snr, fused))
    return LayerReport(
        artifact=artifact, reference=reference, samples=len(samples), layers=layers,
        first_jump=_first_jump(layers, jump_ratio, jump_min_increase), jump_ratio=jump_ratio,
        jump_min_increase=jump_min_increase,
    )


def _relative(signal: float, noise: float) -> float:
    """sqrt(noise / signal): the relative RMS error, from the summed squares of reference and error."""
    if signal == 0.0:
        return 0.0 if noise == 0.0 else math.inf
    return math.sqrt(noise / signal)


def _snr(signal: float, noise: float) -> float:
    if noise > 0 and signal > 0:
        return round(10 * math.log10(signal / noise), 2)
    return 120.0 if noise == 0 else -120.0


def _first_jump(layers: list[LayerError], jump_ratio: float, jump_min_increase: float) -> LayerError | None:
    return next(
        (
            e for e in layers
            if e.increase >= jump_min_increase and e.rel_error >= jump_ratio * e.input_rel_error
        ),
        None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Layer by layer, through the runners (formats other than ONNX).

#: Ops that move data rather than compute (TFLite names): not worth naming as where an error comes from.
_RUNTIME_PLUMBING = frozenset(
    {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CAST", "QUANTIZE", "DEQUANTIZE"}
)


def _signature(layer: LayerOutput) -> tuple[str, tuple[int, ...]]:
    # Sorted dimensions: the same tensor in NHWC in one file and NCHW in the other still pairs.
    return layer.op, tuple(sorted(layer.value.shape))


def match_layers(reference: list[LayerOutput], candidate: list[LayerOutput]) -> list[tuple[int, int, str]]:
    """Pairs ``(position in reference, position in candidate, "name" | "position")`` of the tensors that hold
    the same values in two files of one model (an FP32 file and the INT8 file converted from the same model).

    Tensor names alike are a hint, not a key: litert-torch names a tensor after the module stack of its FX
    nodes and numbers repeats in file order, so a file whose converter folded an op (an FP32 multiply by ones)
    numbers the rest differently, and a name both files hold can belong to different tensors.

    1. By name: a name each list holds once, written in both by the same op with the same dimensions, and in
       the same order as the name pairs before it.
    2. By position: between two consecutive name pairs (and before the first, after the last), the remaining
       tensors are aligned on their sequences of (op, dimensions) with difflib, so an op that only one file
       has leaves the ops around it paired.
    """
    ref_pos = _unique_positions(reference)
    cand_pos = _unique_positions(candidate)
    anchors: list[tuple[int, int]] = []
    for name, i in sorted(ref_pos.items(), key=lambda kv: kv[1]):
        j = cand_pos.get(name)
        if j is None or (anchors and j <= anchors[-1][1]):
            continue
        if _signature(reference[i]) == _signature(candidate[j]):
            anchors.append((i, j))
    pairs = [(i, j, "name") for i, j in anchors]
    bounds = [(-1, -1), *anchors, (len(reference), len(candidate))]
    for (i0, j0), (i1, j1) in itertools.pairwise(bounds):
        ref_sigs = [_signature(e) for e in reference[i0 + 1:i1]]
        cand_sigs = [_signature(e) for e in candidate[j0 + 1:j1]]
        blocks = difflib.SequenceMatcher(None, ref_sigs, cand_sigs, autojunk=False).get_matching_blocks()
        pairs += [(i0 + 1 + b.a + k, j0 + 1 + b.b + k, "position") for b in blocks for k in range(b.size)]
    return sorted(pairs)


def _unique_positions(layers: list[LayerOutput]) -> dict[str, int]:
    seen: dict[str, int] = {}
    repeated = set()
    for i, e in enumerate(layers):
        if e.tensor in seen:
            repeated.add(e.tensor)
        seen[e.tensor] = i
    return {name: i for name, i in seen.items() if name not in repeated}


def _as_reference(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` laid out like a reference tensor of ``shape``: as it is, or transposed NHWC <-> NCHW."""
    if value.shape == shape:
        return value
    if value.ndim == 4:
        for perm in ((0, 3, 1, 2), (0, 2, 3, 1)):
            if tuple(value.shape[p] for p in perm) == shape:
                return value.transpose(perm)
    return None


def runtime_layer_errors(
    reference: Artifact,
    candidate: Artifact,
    samples: list[Feeds],
    *,
    jump_ratio: float = JUMP_RATIO,
    jump_min_increase: float = JUMP_MIN_INCREASE,
) -> LayerReport | None:
    """Relative error of every tensor of ``candidate`` paired with one of ``reference`` (``match_layers``, on
    the first sample), read through their runners' ``layer_outputs``; and the first op where it jumps. None
    when either runner cannot read its intermediate tensors.

    Layers are the candidate's ops in its execution order. An op's input error is that of the reference
    tensors it reads, or, for a tensor left unpaired, of the nearest paired ones upstream of it.
    """
    from edgec.benchmarks.harness import _adapt_feeds, open_runner

    if not samples:
        raise ConfigError("no samples for the layer-by-layer comparison")
    with open_runner(reference, threads=1) as ref_runner, open_runner(candidate, threads=1) as cand_runner:
        pairs: list[tuple[int, int, str]] = []
        sums: dict[int, list[float]] = {}  # candidate position -> [signal, noise]
        ref_layers = cand_layers = None
        for feeds in samples:
            r = ref_runner.layer_outputs(_adapt_feeds(feeds, ref_runner.input_specs(), reference.spec))
            c = cand_runner.layer_outputs(_adapt_feeds(feeds, cand_runner.input_specs(), candidate.spec))
            if r is None or c is None:
                return None
            if ref_layers is None:
                ref_layers, cand_layers = r, c
                pairs = [
                    (i, j, how) for i, j, how in match_layers(r, c)
                    if _as_reference(c[j].value, r[i].value.shape) is not None
                ]
                sums = {j: [0.0, 0.0] for _, j, _ in pairs}
            for i, j, _ in pairs:
                a = np.asarray(r[i].value, np.float64)
                b = np.asarray(_as_reference(c[j].value, r[i].value.shape), np.float64)
                finite = np.isfinite(a) & np.isfinite(b)
                sums[j][0] += float(np.sum(a[finite] ** 2))
                sums[j][1] += float(np.sum((a[finite] - b[finite]) ** 2))
    assert ref_layers is not None and cand_layers is not None
    layers = _runtime_layers(ref_layers, cand_layers, pairs, sums)
    return LayerReport(
        artifact=candidate.name, reference=reference.name, samples=len(samples), layers=layers,
        first_jump=_first_jump(layers, jump_ratio, jump_min_increase), jump_ratio=jump_ratio,
        jump_min_increase=jump_min_increase,
    )


def _runtime_layers(
    ref: list[LayerOutput],
    cand: list[LayerOutput],
    pairs: list[tuple[int, int, str]],
    sums: dict[int, list[float]],
) -> list[LayerError]:
    to_cand = {i: j for i, j, _ in pairs}
    to_ref = {j: (i, how) for i, j, how in pairs}
    # Errors flow along the reference graph: a tensor the candidate lacks carries the error upstream of it.
    upstream: dict[str, float] = {}
    for i, e in enumerate(ref):
        inherited = max([upstream.get(t, 0.0) for t in e.inputs] or [0.0])
        upstream[e.tensor] = _relative(*sums[to_cand[i]]) if i in to_cand else inherited
    ref_producer = {e.tensor: i for i, e in enumerate(ref)}
    cand_producer = {e.tensor: j for j, e in enumerate(cand)}
    layers = []
    for j, e in enumerate(cand):
        if j not in to_ref or not e.op:  # a model input is not a layer
            continue
        i, how = to_ref[j]
        signal, noise = sums[j]
        unpaired = [
            f"'op {ref[k].index}' ({ref[k].op}, FP32 only)"
            for k in (ref_producer.get(t) for t in ref[i].inputs)
            if k is not None and k not in to_cand and ref[k].op and ref[k].op not in _RUNTIME_PLUMBING
        ] + [
            f"'op {cand[k].index}' ({cand[k].op}, not in FP32)"
            for k in (cand_producer.get(t) for t in e.inputs)
            if k is not None and k not in to_ref and cand[k].op and cand[k].op not in _RUNTIME_PLUMBING
        ]
        layers.append(LayerError(
            node=f"op {e.index}", op_type=e.op, output=e.tensor, rel_error=_relative(signal, noise),
            input_rel_error=max([upstream.get(t, 0.0) for t in ref[i].inputs] or [0.0]),
            snr_db=_snr(signal, noise), fused_with=unpaired, module=e.module or ref[i].module, matched_by=how,
            reference_output=ref[i].tensor,
        ))
    return layers


def layer_candidates(artifacts: list[Artifact]) -> tuple[dict[str, tuple[Artifact, Artifact]], dict[str, str]]:
    """For each reduced-precision artifact, the FP32 artifact of the same format to walk it against: of the
    same profile, else of the same target, else any (an mcu .tflite pairs with an arm build's FP32 .tflite);
    and why the others get no layer report. Whether a non-ONNX pair's runners can read their layers shows when
    they run."""
    pairs: dict[str, tuple[Artifact, Artifact]] = {}
    skipped: dict[str, str] = {}
    for a in artifacts:
        if a.precision.value == "fp32":
            continue
        fp32 = [f for f in artifacts if f.format == a.format and f.precision.value == "fp32"]
        ref = next(
            (f for f in fp32 if f.metadata.get("profile") == a.metadata.get("profile")),
            next((f for f in fp32 if f.target == a.target), fp32[0] if fp32 else None),
        )
        if ref is None:
            fmt = {ModelFormat.ONNX: "ONNX", ModelFormat.TFLITE: ".tflite"}.get(a.format, a.format.value)
            why = f"the build has no FP32 {fmt} artifact to compare its layers with"
            if a.format == ModelFormat.TFLITE:
                why += ("; pass a build that has one too (for an mcu build: an arm build of the same "
                        "checkpoint with -p fp32)")
            skipped[a.name] = why
            continue
        pairs[a.name] = (ref, a)
    return pairs, skipped


def text_report(comparison: Comparison) -> str:
    """The N-way table, the pairwise agreement matrix and the layer findings, for the terminal."""

    lines = [f"reference: {comparison.reference}; {comparison.samples} samples", ""]
    header = ["artifact", "runtime", "output", "task metric (drop pts)", "top-1 agree %", "cosine", "SNR dB",
              "max abs err", "mean abs err"]
    rows = []
    for name, report in comparison.reports.items():
        for out, m in report.per_output.items():
            t = report.tasks.get(out)
            task = MISSING if t is None or t.value is None else f"{t.task} {t.headline} {t.value:.4g} ({t.drop:.2f})"
            rows.append([
                name, comparison.runtimes.get(name, ""), out, task, num_cell(m.top1_agreement, ".2f"),
                num_cell(m.cosine, ".6f"), num_cell(m.snr_db, ".1f"), num_cell(m.max_abs_error, ".3g"),
                num_cell(m.mean_abs_error, ".3g"),
            ])
    lines += aligned_lines(header, rows, numeric_from=4)
    if comparison.pairwise:
        names = list(comparison.pairwise)
        lines += ["", f"top-1 agreement % between runs (output '{comparison.primary_output}'):"]
        short = [f"[{i}]" for i in range(len(names))]
        matrix = [
            [f"[{i}] {n}"] + [num_cell(comparison.pairwise[n][m], ".2f") for m in names] for i, n in enumerate(names)
        ]
        lines += aligned_lines([""] + short, matrix, numeric_from=1)
    for name, rep in comparison.layers.items():
        lines.append("")
        if rep.first_jump is None:
            lines.append(
                f"{name}: no layer's error jumps (>= {rep.jump_ratio:g}x its inputs' and +{rep.jump_min_increase:g}) "
                f"over {len(rep.layers)} layers, {rep.samples} samples"
            )
        else:
            j = rep.first_jump
            lines.append(
                f"{name}: error first jumps at {j.where}, output '{_short(j.output)}': relative error "
                f"{j.rel_error:.4f} from {j.input_rel_error:.4f} at its inputs; keep it in higher precision"
            )
        worst = ", ".join(f"{e.where} +{e.increase:.4f}" for e in rep.worst(3))
        lines.append(f"  largest increases: {worst}")
    for name, why in comparison.skipped_layers.items():
        lines.append(f"{name}: no layer report ({why})")
    return "\n".join(lines) + "\n"


def _short(name: str, width: int = 80) -> str:
    """A long tensor name (litert-torch's hold the whole module stack, several times over) cut in the middle;
    the JSON report keeps it whole."""
    if len(name) <= width:
        return name
    head = width // 3
    return f"{name[:head]}...{name[-(width - head - 3):]}"


def compare_build(
    artifacts: list[Artifact],
    eval_feeds: list[Feeds],
    *,
    reference: Callable[[Feeds], Mapping[str, Any]] | None = None,
    reference_artifact: Artifact | None = None,
    reference_name: str | None = None,
    labels: Any = None,
    layer_samples: int = 8,
    threads: int = 1,
    jump_ratio: float = JUMP_RATIO,
    jump_min_increase: float = JUMP_MIN_INCREASE,
    say: Callable[[str], None] = lambda _msg: None,
) -> Comparison:
    """Run ``eval_feeds`` through the reference and each artifact, compare them all, and walk each
    reduced-precision artifact layer by layer against an FP32 artifact of its format (on the first
    ``layer_samples`` samples; 0 = skip): ONNX files directly, other formats through their runners.

    The reference is ``reference`` (a function, e.g. the torch model), else ``reference_artifact``, else the
    first FP32 artifact in ``artifacts``.
    """
    from edgec.benchmarks.harness import run_outputs

    if not artifacts:
        raise ConfigError("no artifacts to compare", hint="pass a build folder")
    label_arr = None if labels is None else np.asarray(labels)
    if reference is not None:
        say(f"reference: running {reference_name or 'the reference'} on {len(eval_feeds)} samples")
        ref_outputs = [
            {k: np.asarray(_numpy(v)) for k, v in reference(f).items()}
            for f in track(say, "reference: samples", eval_feeds)
        ]
        ref_label = reference_name or "reference function"
        candidates = list(artifacts)
    else:
        ref_art = reference_artifact or next((a for a in artifacts if a.precision.value == "fp32"), None)
        if ref_art is None:
            raise ConfigError(
                "nothing to compare against: the build has no FP32 artifact and its checkpoint is not here",
                hint="pass --reference CHECKPOINT (run in torch) or an FP32 .onnx file",
            )
        say(f"reference: {ref_art.name} on {len(eval_feeds)} samples")
        ref_outputs, _ = run_outputs(ref_art, eval_feeds, threads, say=say)
        ref_label = reference_name or ref_art.name
        candidates = [a for a in artifacts if a is not ref_art]
    outputs: dict[str, list[Outputs]] = {}
    runtimes: dict[str, str] = {}
    ref_names = list(ref_outputs[0])
    for i, artifact in enumerate(candidates, 1):
        say(f"[{i}/{len(candidates)}] {artifact.name}: {len(eval_feeds)} samples")
        outs, runtimes[artifact.name] = run_outputs(artifact, eval_feeds, threads, output_names=ref_names, say=say)
        outputs[artifact.name] = outs
    comparison = compare_runtimes(candidates, outputs, runtimes, ref_outputs, ref_label, label_arr)
    if layer_samples:
        pairs, comparison.skipped_layers = layer_candidates(artifacts)
        for name, (fp32, cand) in pairs.items():
            say(f"{name}: layer by layer against {fp32.name} on {min(layer_samples, len(eval_feeds))} samples")
            if cand.format == ModelFormat.ONNX:
                comparison.layers[name] = layer_errors(
                    Path(fp32.path), Path(cand.path), eval_feeds[:layer_samples], artifact=name,
                    reference=fp32.name, jump_ratio=jump_ratio, jump_min_increase=jump_min_increase,
                )
                continue
            report = runtime_layer_errors(
                fp32, cand, eval_feeds[:layer_samples], jump_ratio=jump_ratio,
                jump_min_increase=jump_min_increase,
            )
            if report is None:
                comparison.skipped_layers[name] = (
                    f"the runner of {cand.name} or of {fp32.name} cannot read its intermediate tensors"
                )
            else:
                comparison.layers[name] = report
    return comparison


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
