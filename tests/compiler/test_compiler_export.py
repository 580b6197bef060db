"""Export of the model variety real checkpoints have: the ONNX file must match torch on real inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zoo_models
from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext
from edgec.compiler.onnxutil import ort_session
from edgec.compiler.stages.export import ExportStage, VerifyStage
from edgec.compiler.stages.load import load_checkpoint
from edgec.compiler.types import ArrayCalibrationSet, TensorSpec


def _export(tmp_path, checkpoint, inputs=()):
    loaded = load_checkpoint(checkpoint, inputs)
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    out = tmp_path / "export"
    out.mkdir()
    return loaded, ExportStage().run({"model": loaded}, out, ctx), ctx


def _verify(tmp_path, loaded, exported, ctx, samples):
    calib = ArrayCalibrationSet(samples)
    d = tmp_path / "verify"
    d.mkdir()
    return VerifyStage().run({"model": loaded, "onnx": exported, "calibration": calib}, d, ctx)


@pytest.mark.parametrize(
    "cls", [zoo_models.TokensAndFeatures, zoo_models.Activations, zoo_models.Recurrent], ids=lambda c: c.__name__
)
def test_exported_program_variety_matches_torch(tmp_path, cls):
    torch.manual_seed(0)
    model = cls().eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, cls.example_inputs), str(path))
    loaded, exported, ctx = _export(tmp_path, path)
    assert exported.info["exporter"] == "dynamo"
    onnx.checker.check_model(onnx.load(str(exported.path)), full_check=True)
    assert len(exported.spec.outputs) == len(loaded.spec.outputs)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):
        feeds = {}
        for t in exported.spec.inputs:
            shape = t.concrete_shape()
            if t.dtype == "int64":
                feeds[t.name] = rng.integers(0, 50, shape).astype(np.int64)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        samples.append(feeds)
    check = _verify(tmp_path, loaded, exported, ctx, samples)
    assert check["samples"] == 3
    assert check["max_abs_diff"] < 1e-4


def test_int64_token_input_keeps_its_dtype(tmp_path):
    model = zoo_models.TokensAndFeatures().eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, model.example_inputs), str(path))
    _, exported, _ = _export(tmp_path, path)
    dtypes = {t.name: t.dtype for t in exported.spec.inputs}
    assert dtypes == {"tokens": "int64", "features": "float32"}


def test_dynamic_batch_axis(tmp_path):
    model = zoo_models.tiny_cnn().eval()
    path = tmp_path / "m.pt"
    torch.jit.trace(model, torch.zeros(1, 1, 8, 8)).save(str(path))
    loaded, exported, _ = _export(tmp_path, path, (TensorSpec.parse("x:Nx1x8x8"),))
    # TorchScript modules cannot go through torch.export: the fallback ran and says why.
    assert exported.info["exporter"] == "torchscript (fallback)"
    assert "torch.export" in exported.info["dynamo_error"]
    session = ort_session(exported.path)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    assert exported.spec.inputs[0].shape[0] == "N"


def test_dynamic_batch_through_dynamo(tmp_path):
    model = zoo_models.Activations().eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), str(path))
    loaded = load_checkpoint(path, (TensorSpec.parse("x:batchx3x16x16"),), model_factory="zoo_models:Activations")
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    exported = ExportStage().run({"model": loaded}, tmp_path, ctx)
    assert exported.info["exporter"] == "dynamo"
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = ort_session(exported.path).run(None, {"x": x})[0]
    assert got.shape == (3, 5)


def test_onnx_constant_weights_become_initializers(tmp_path):
    path = tmp_path / "const.onnx"
    zoo_models.onnx_with_constant_weights(path)
    _, exported, _ = _export(tmp_path, path)
    model = onnx.load(str(exported.path))
    assert exported.info["constants_moved"] == 4
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {i.name for i in model.graph.initializer}


def test_an_onnx_output_declared_with_the_wrong_shape_takes_the_shape_it_gives(tmp_path):
    """ddddocr's OCR files declare their [T, 1, C] output as [1, seqlen]: tasks are read from, and slimming must
    keep, the shape the model gives."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("s", TensorProto.INT64, [3], [5, 1, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=2)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])], [shape])
    path = tmp_path / "timemajor.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    said: list[str] = []
    loaded = load_checkpoint(path, ())
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False), report=said.append)
    (tmp_path / "export").mkdir()
    exported = ExportStage().run({"model": loaded}, tmp_path / "export", ctx)
    assert exported.spec.outputs[0].shape == (5, 1, 4)
    assert exported.info["outputs_as_given"] == {"y": {"declared": [1, "seqlen"], "given": [5, 1, 4]}}
    assert any(line.startswith("warning: 'timemajor.onnx' declares output 'y' as [1, 'seqlen'] but gives "
                               "[5, 1, 4]") for line in said)
    x = np.random.default_rng(0).standard_normal((1, 20)).astype(np.float32)
    (got,) = ort_session(exported.path).run(None, {"x": x})
    assert got.shape == (5, 1, 4)  # whatever onnxslim did, the file gives what the source gives
    assert exported.info["slim"] == "applied" or exported.info["slim"].startswith("undone: onnxslim changed")
    check = _verify(tmp_path, loaded, exported, ctx, [{"x": x}])
    assert check["max_abs_diff"] < 1e-6


def test_dynamic_height_and_width_export_a_fully_convolutional_model(tmp_path):
    """MTCNN's PNet or a DBNet text detector takes any image size: --input x:Nx3xHxW must not probe at 1x1."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).eval()
    path = tmp_path / "fcn.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 12, 12)).save(str(path))
    _, exported, _ = _export(tmp_path, path, (TensorSpec.parse("x:Nx3xHxW"),))
    session = ort_session(exported.path)
    for shape in ((1, 3, 20, 30), (2, 3, 48, 24)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        got = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
