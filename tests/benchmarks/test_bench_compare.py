"""edgec compare: N-way agreement between the torch reference and every artifact, and the layer where INT8
error jumps, found on a model with a planted hard-to-quantize layer: in ONNX (cpu) and in TFLite (rpi5, and an
mcu build against the rpi5 build's FP32 file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo_models
from edgec.benchmarks.compare import layer_errors, match_layers, runtime_layer_errors
from edgec.compiler.types import LayerOutput


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The plain and the outlier network as checkpoints (plain.pt2, outlier.pt2), and 32 + 32 digit images."""
    import torch
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("compare")
    x = (load_digits().images[:64, None] / 16.0).astype(np.float32)
    np.savez(d / "calib.npz", x=x[:32])
    np.savez(d / "eval.npz", x=x[32:])
    for name, outlier in (("plain", 1.0), ("outlier", 200.0)):
        exported = torch.export.export(zoo_models.outlier_net(outlier), (torch.zeros(1, 1, 8, 8),))
        torch.export.save(exported, str(d / f"{name}.pt2"))
    return d


def _build(d, name, target, precisions, folder):
    from edgec.api import build
    from edgec.recipe import Recipe

    # Unverified: these builds keep the planted layer in INT8 on purpose, to be found layer by layer (the build's
    # own verification would keep it in float; tests/test_verify.py covers that).
    build(Recipe(checkpoint=str(d / f"{name}.pt2"), target=[target], precision=list(precisions),
                 calib=str(d / "calib.npz"), out=str(d / folder), verify=False))
    return d / folder


@pytest.fixture(scope="module")
def builds(planted):
    """A plain and an outlier build (cpu fp32 + int8) of the same network, and 32 digit images."""
    return planted, {
        name: _build(planted, name, "cpu", ("fp32", "int8"), name) for name in ("plain", "outlier")
    }


@pytest.fixture(scope="module")
def tflite_builds(planted):
    """The same two networks built for rpi5 (LiteRT, fp32 + int8)."""
    for module, dist in (("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")):
        pytest.importorskip(module, reason=f"the TFLite layer walk needs {dist} (pip install 'edgec[arm]')")
    return planted, {
        name: _build(planted, name, "rpi5", ("fp32", "int8"), f"{name}-rpi5") for name in ("plain", "outlier")
    }


def _tflite_pair(folder):
    from edgec.benchmarks.harness import load_build

    artifacts, _ = load_build(folder)
    by_name = {a.name: a for a in artifacts}
    return by_name["rpi5/fp32"], by_name["rpi5/int8"]


def _samples(folder, n=8):
    with np.load(folder / "eval.npz") as f:
        return [{"x": f["x"][i:i + 1]} for i in range(n)]


def test_layer_walk_finds_the_planted_layer(builds):
    d, out = builds
    report = layer_errors(out["outlier"] / "cpu" / "model.fp32.onnx", out["outlier"] / "cpu" / "model.int8.onnx",
                          _samples(d))
    assert report.first_jump is not None, [e.to_dict() for e in report.layers]
    # The jump is where the damage shows: the second conv (its ReLU output once the quantizer folded the ReLU).
    order = [e.node for e in report.layers]
    jump = report.first_jump
    mul = next(i for i, e in enumerate(report.layers) if e.op_type == "Mul")
    assert order.index(jump.node) > mul
    assert jump.rel_error > 0.1 and jump.rel_error >= 2 * jump.input_rel_error
    assert report.worst(1)[0].node == jump.node


def test_layer_walk_finds_no_jump_on_a_plain_network(builds):
    d, out = builds
    report = layer_errors(out["plain"] / "cpu" / "model.fp32.onnx", out["plain"] / "cpu" / "model.int8.onnx",
                          _samples(d))
    assert report.first_jump is None, report.first_jump
    assert report.layers and max(e.rel_error for e in report.layers) < 0.05


def test_compare_cli_prints_the_n_way_table_and_json(builds, edgec_cli):
    d, out = builds
    r = edgec_cli("compare", out["outlier"], "--data", d / "eval.npz")
    assert r.returncode == 0, r.stderr
    assert "torch (outlier.pt2)" in r.stdout  # the build's checkpoint is the reference
    for name in ("cpu/fp32", "cpu/int8"):
        assert name in r.stdout
    assert "top-1 agreement % between runs" in r.stdout
    assert "cpu/int8: error first jumps at" in r.stdout and "(Conv) + " in r.stdout

    r = edgec_cli("-q", "compare", out["outlier"], "--data", d / "eval.npz", "--json", "-")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # nothing but JSON on stdout
    assert data["schema"] == "edgec-compare/1" and data["samples"] == 32
    fp32 = data["artifacts"]["cpu/fp32"]["per_output"]["output"]
    assert fp32["top1_agreement"] == 100.0 and fp32["max_abs_error"] < 1e-4
    int8 = data["artifacts"]["cpu/int8"]["per_output"]["output"]
    assert int8["snr_db"] < fp32["snr_db"]
    names = list(data["pairwise_top1_agreement"])
    assert len(names) == 3 and all(data["pairwise_top1_agreement"][n][n] == 100.0 for n in names)
    assert data["layers"]["cpu/int8"]["first_jump"]["node"]
    assert r.stderr == ""  # -q: no progress


def test_compare_unknown_artifact_is_a_usage_error(builds, edgec_cli):
    d, out = builds
    r = edgec_cli("compare", out["plain"], "--data", d / "eval.npz", "--artifact", "cpu/int4")
    assert r.returncode == 2
    assert "no artifact 'cpu/int4'" in r.stderr and "cpu/int8" in r.stderr and "Traceback" not in r.stderr


def test_match_layers_pairs_by_name_then_by_position():
    """A name both files hold is a pair only when the same op wrote it: here the INT8 file kept a multiply the
    FP32 converter folded, so its numbered names run one ahead and the ops after it pair by position."""

    def layers(*ops):
        return [
            LayerOutput(name, op, i - 1, (), np.zeros(shape, np.float32))
            for i, (name, op, shape) in enumerate(ops)
        ]

    fmap = (1, 4, 4, 8)
    ref = layers(("x", "", (1, 4, 4, 1)), ("A;1", "DEPTHWISE_CONV_2D", fmap), ("A;2", "CONV_2D", fmap),
                 ("A;3", "TRANSPOSE", fmap), ("out", "FULLY_CONNECTED", (1, 10)))
    cand = layers(("x", "", (1, 4, 4, 1)), ("A;1", "DEPTHWISE_CONV_2D", fmap), ("A;2", "MUL", fmap),
                  ("A;3", "CONV_2D", fmap), ("A;4", "TRANSPOSE", fmap), ("out", "FULLY_CONNECTED", (1, 10)))
    assert match_layers(ref, cand) == [
        (0, 0, "name"), (1, 1, "name"), (2, 3, "position"), (3, 4, "position"), (4, 5, "name"),
    ]


def test_tflite_layer_walk_finds_the_planted_layer(tflite_builds):
    d, out = tflite_builds
    fp32, int8 = _tflite_pair(out["outlier"])
    report = runtime_layer_errors(fp32, int8, _samples(d))
    assert report is not None
    assert report.first_jump is not None, [e.to_dict() for e in report.layers]
    ops = [e.op_type for e in report.layers]
    assert ops == ["DEPTHWISE_CONV_2D", "MUL", "CONV_2D", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"]
    # The planted scale (MUL) or the conv right after it, which undoes the scale and shows the damage.
    jump = report.first_jump
    assert ops.index(jump.op_type) in (ops.index("MUL"), ops.index("MUL") + 1), jump
    assert jump.rel_error > 0.1 and jump.rel_error >= 2 * jump.input_rel_error
    assert report.worst(1)[0].node == jump.node
    assert jump.node.startswith("op ") and jump.output and jump.reference_output
    assert {e.matched_by for e in report.layers} <= {"name", "position"}


def test_tflite_layer_walk_finds_no_jump_on_a_plain_network(tflite_builds):
    d, out = tflite_builds
    fp32, int8 = _tflite_pair(out["plain"])
    report = runtime_layer_errors(fp32, int8, _samples(d))
    assert report is not None
    assert report.first_jump is None, report.first_jump
    assert report.layers and max(e.rel_error for e in report.layers) < 0.05
    # The FP32 converter folded the multiply by ones into the conv; the INT8 file kept it. The ops around it
    # still pair (by position where the numbered names disagree), and the conv is named with it.
    conv = next(e for e in report.layers if e.op_type == "CONV_2D")
    assert any("(MUL, not in FP32)" in f for f in conv.fused_with), conv


def test_compare_cli_names_the_tflite_layer(tflite_builds, edgec_cli):
    d, out = tflite_builds
    r = edgec_cli("compare", out["outlier"], "--data", d / "eval.npz")
    assert r.returncode == 0, r.stderr
    assert "rpi5/int8: error first jumps at 'op " in r.stdout and "(CONV_2D)" in r.stdout, r.stdout
    assert "no layer report" not in r.stdout

    r = edgec_cli("-q", "compare", out["plain"], "--data", d / "eval.npz", "--json", "-")
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["layers"]["rpi5/int8"]
    assert layers["first_jump"] is None and layers["layers"]
    assert all(e["matched_by"] in ("name", "position") for e in layers["layers"])


@pytest.mark.slow
def test_compare_walks_an_mcu_build_against_the_arm_fp32_file(tflite_builds, edgec_cli):
    """The mcu .tflite runs on LiteRT's reference kernels against the rpi5 build's FP32 .tflite; alone, it has
    no FP32 file to walk against and says how to get one."""
    pytest.importorskip("tflite_micro", reason="the mcu runner needs tflite-micro (pip install 'edgec[mcu]')")
    d, out = tflite_builds
    mcu = _build(d, "outlier", "cortex-m55", ("int8",), "outlier-mcu")
    r = edgec_cli("compare", mcu, "--data", d / "eval.npz")
    assert r.returncode == 0, r.stderr
    assert "cortex-m55/int8: no layer report (the build has no FP32 .tflite artifact" in r.stdout
    assert "an arm build" in r.stdout

    r = edgec_cli("compare", mcu, out["outlier"], "--data", d / "eval.npz")
    assert r.returncode == 0, r.stderr
    assert "cortex-m55/int8: error first jumps at 'op " in r.stdout and "(CONV_2D)" in r.stdout, r.stdout
