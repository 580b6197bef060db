"""Tiny ONNX models for the benchmark tests, built on the fly (never checked in), and their Artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import Artifact, ModelFormat, Precision, sha256_file

FEATURES = 16
CLASSES = 10


def classifier_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), rng.standard_normal(CLASSES).astype(
        np.float32
    )


def save_classifier(
    path: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    input_name: str = "x",
    outputs: tuple[str, ...] = ("logits",),
) -> Path:
    """x[N,16] -> MatMul -> Add -> logits[N,10]; a second output name adds ``x * 2`` as a second output."""
    nodes = [
        helper.make_node("MatMul", [input_name, "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], [outputs[0]]),
    ]
    graph_outputs = [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["N", CLASSES])]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    if len(outputs) > 1:
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        nodes.append(helper.make_node("Mul", [input_name, "two"], [outputs[1]]))
        graph_outputs.append(helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, ["N", FEATURES]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", FEATURES])],
        graph_outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_artifact(path: Path, precision: Precision = Precision.FP32, target: str = "onnxruntime") -> Artifact:
    spec = onnx_spec(onnx.load(str(path)))
    return Artifact(Path(path), ModelFormat.ONNX, precision, target, spec, sha256_file(path), {})


def eval_feeds(n: int = 20, batch: int = 1, seed: int = 1, name: str = "x") -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal((batch, FEATURES)).astype(np.float32)} for _ in range(n)]


def make_results(with_labels: bool = True):
    """BenchResults by hand: an fp32 reference and an int8 run that lost 20 points and runs faster."""
    from edgec.benchmarks.accuracy import compare_outputs
    from edgec.benchmarks.latency import summarize
    from edgec.benchmarks.results import BenchResults, RunResult

    def logits(classes: list[int]) -> list[dict[str, np.ndarray]]:
        return [{"logits": np.eye(CLASSES, dtype=np.float32)[[c]]} for c in classes]

    truth = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    ref = logits(truth)
    int8 = logits([0, 1, 2, 3, 4, 5, 6, 7, 0, 0])
    labels = np.array(truth) if with_labels else None
    runs = []
    for name, outs, lat, size, is_ref in (
        ("onnxruntime/fp32", ref, [2.0, 2.2, 2.4, 2.6], 3 * 1024 * 1024, True),
        ("onnxruntime/int8", int8, [1.0, 1.1, 1.2, 5.0], 900 * 1024, False),
    ):
        stats = summarize(lat, batch=1, warmup=2)
        stats.peak_rss_bytes, stats.peak_rss_delta_bytes = 200 * 1024 * 1024, 12 * 1024 * 1024
        runs.append(
            RunResult(
                name=name,
                path=f"/builds/{name.replace('/', '.')}.onnx",
                format="onnx",
                precision=name.split("/")[1],
                target="onnxruntime",
                runtime="onnxruntime 1.32.0 (CPUExecutionProvider)",
                size_bytes=size,
                sha256="ab" * 32,
                threads=1,
                latency=stats,
                accuracy=compare_outputs(ref, outs, labels=labels, reference_name="onnxruntime/fp32"),
                environment={"cpu": "Test CPU", "cores": 2},
                started_at="2025-01-01T00:00:00+00:00",
                is_reference=is_ref,
            )
        )
    return BenchResults(runs=runs, reference="onnxruntime/fp32", data_source="synthetic", samples=10)
