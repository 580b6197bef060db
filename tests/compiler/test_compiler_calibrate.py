"""Activation ranges cover every calibration sample, whatever the count (ORT's chunking once dropped most)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext
from edgec.compiler.errors import CalibrationError
from edgec.compiler.stages.calibrate import CalibrateStage
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import ArrayCalibrationSet, OnnxModel


@pytest.fixture
def relu_model(tmp_path):
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return OnnxModel(path, onnx_spec(model), {})


def _stats(tmp_path, model, samples, method="minmax"):
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    return CalibrateStage(method).run({"onnx": model, "calibration": ArrayCalibrationSet(samples)}, tmp_path, ctx)


@pytest.mark.parametrize("count_big, count_small", [(32, 8), (64, 0), (5, 70)])
def test_ranges_cover_every_sample(tmp_path, relu_model, count_big, count_small):
    samples = [{"x": np.full((1, 4), 100.0, np.float32)}] * count_big
    samples += [{"x": np.full((1, 4), 1.0, np.float32)}] * count_small
    ranges = _stats(tmp_path, relu_model, samples).ranges()
    assert ranges["r"][1] == pytest.approx(100.0)
    assert ranges["y"][0] == pytest.approx(-100.0)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_over_several_chunks(tmp_path, relu_model, method):
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(0, 10, (1, 4)).astype(np.float32)} for _ in range(70)]
    hi = _stats(tmp_path, relu_model, samples, method).ranges()["r"][1]
    assert 5.0 < hi <= 10.0


def test_no_samples(tmp_path, relu_model):
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    stage = CalibrateStage()
    with pytest.raises(CalibrationError):
        stage.requires({"onnx": relu_model, "calibration": ArrayCalibrationSet([])}, ctx)


def _attention_model(tmp_path):
    """x [1, 4, 8] -> q = x @ W; softmax(q @ q^T) @ q: one linear layer (reading x) in an attention model."""
    import onnx
    from onnx import numpy_helper

    w = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "q"], ["y"])]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "attn.onnx"
    onnx.save(model, str(path))
    return OnnxModel(path, onnx_spec(model), {})


def test_per_channel_maxima_of_linear_inputs_for_attention_models_only(tmp_path, relu_model):
    rng = np.random.default_rng(1)
    samples = [{"x": (rng.normal(size=(1, 4, 8)) * np.arange(1, 9)).astype(np.float32)} for _ in range(40)]
    (tmp_path / "a").mkdir()
    (tmp_path / "r").mkdir()
    stats = _stats(tmp_path / "a", _attention_model(tmp_path), samples)
    with np.load(stats.channel_max) as z:
        assert list(z["names"]) == ["x"]
        want = np.max([np.abs(s["x"]).reshape(-1, 8).max(axis=0) for s in samples], axis=0)
        np.testing.assert_allclose(z["t0"], want, rtol=1e-6)
    assert _stats(tmp_path / "r", relu_model, [{"x": np.ones((1, 4), np.float32)}]).channel_max is None
