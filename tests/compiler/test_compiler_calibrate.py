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
