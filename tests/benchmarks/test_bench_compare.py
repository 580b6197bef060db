"""edgec compare: N-way agreement between the torch reference and every artifact, and the layer where INT8
error jumps, found on a model with a planted hard-to-quantize layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgec.benchmarks.compare import layer_errors


def _outlier_net(outlier: float):
    """conv -> relu -> scale channel 0 by ``outlier`` -> conv that undoes it -> relu -> linear.

    In float the scale cancels out. INT8 quantizes the scaled tensor per tensor, so its step is ``outlier``
    times too coarse for channels 1-7, and the error shows at the second conv: the layer to keep in FP32.
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8 * 8 * 8, 10)
            scale = torch.ones(1, 8, 1, 1)
            scale[0, 0] = outlier
            self.register_buffer("scale", scale)
            with torch.no_grad():
                self.conv2.weight[:, 0] /= outlier

        def forward(self, x):
            x = torch.relu(self.conv1(x)) * self.scale
            x = torch.relu(self.conv2(x))
            return self.head(x.flatten(1))

    return Net().eval()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """A plain and an outlier build (cpu fp32 + int8) of the same network, and 32 digit images."""
    import torch
    from sklearn.datasets import load_digits

    from edgec.api import build
    from edgec.recipe import Recipe

    d = tmp_path_factory.mktemp("compare")
    x = (load_digits().images[:64, None] / 16.0).astype(np.float32)
    np.savez(d / "calib.npz", x=x[:32])
    np.savez(d / "eval.npz", x=x[32:])
    out = {}
    for name, outlier in (("plain", 1.0), ("outlier", 200.0)):
        ckpt = d / f"{name}.pt2"
        torch.export.save(torch.export.export(_outlier_net(outlier), (torch.zeros(1, 1, 8, 8),)), str(ckpt))
        recipe = Recipe(checkpoint=str(ckpt), target=["cpu"], precision=["fp32", "int8"],
                        calib=str(d / "calib.npz"), out=str(d / name))
        build(recipe)
        out[name] = d / name
    return d, out


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
