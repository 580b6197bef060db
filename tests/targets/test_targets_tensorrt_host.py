"""The tensorrt target's host half for real: a small residual CNN through edgec.api.build --target jetson."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.errors import ConfigError, TargetBuildError
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import ArrayCalibrationSet, OnnxModel, Precision
from edgec.targets.tensorrt import bundle as bundle_mod
from edgec.targets.tensorrt.conformance import check_qdq
from edgec.targets.tensorrt.target import TensorRTOptions, TensorRTTarget

torch = pytest.importorskip("torch")

CALIB_SAMPLES = 50  # 10 held out for verification, 40 calibrate: not a multiple of 32 (see the note on CalibrateStage)


class ResidualCNN(torch.nn.Module):
    """Conv -> Relu -> Conv + skip (a residual Add) -> Relu -> mean -> Linear (a Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.conv(y) + y)
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def jetson_build(tmp_path_factory):
    from edgec import api
    from edgec.recipe import Recipe

    work = tmp_path_factory.mktemp("trt-host")
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    ckpt = work / "residual.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 16, 16),)), str(ckpt))
    rng = np.random.default_rng(0)
    calib = work / "calib.npz"
    np.savez(calib, x=rng.standard_normal((CALIB_SAMPLES, 3, 16, 16)).astype(np.float32))
    recipe = Recipe(
        checkpoint=str(ckpt), target=["jetson"], precision=["fp32", "fp16", "int8"], calib=str(calib),
        inputs=["x:Nx3x16x16"], out=str(work / "out"), cache=False,
    )
    result = api.build(recipe)
    folder = result.out / "jetson-orin-nano"
    # What the driver does once every precision of a profile is in its folder (see the report).
    TensorRTTarget().finish_folder(folder, result.artifacts)
    return result, folder, rng


def _artifacts(result):
    return {a.precision: a for a in result.artifacts}


def test_jetson_resolves_to_the_orin_nano_bundle(jetson_build):
    result, folder, _ = jetson_build
    arts = _artifacts(result)
    assert set(arts) == set(Precision)
    for p, a in arts.items():
        assert a.target == "tensorrt" and a.path.parent == folder and a.path.name == f"model.{p.value}.onnx"
        assert a.metadata["device"] == "jetson-orin-nano" and a.metadata["tensorrt_majors"] == [10]
        assert a.metadata["optimization_profile"] == {"x": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16],
                                                              "max": [8, 3, 16, 16]}}
        assert a.metadata["dla"]["core"] is None
        assert a.metadata["lint"]["unsupported"] == []
        rtx = a.metadata["lint"]["rtx"]
        assert rtx["rejected"] == [] if rtx["ran"] else "not installed" in rtx["why"]
        onnx.checker.check_model(str(a.path))


def test_fp16_keeps_float32_io_and_ran_the_range_check(jetson_build):
    result, _, _ = jetson_build
    art = _artifacts(result)[Precision.FP16]
    m = onnx.load(str(art.path))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    info = art.metadata["fp16"]
    held_out = result.manifest["verification"]["samples"]  # kept out of calibration to verify the build
    assert held_out > 0
    assert info["range_check"] == f"ran on {CALIB_SAMPLES - held_out} calibration sample(s)"
    assert info["fp32_nodes"] == {}


def test_int8_is_tensorrt_flavoured_qdq(jetson_build):
    result, _, _ = jetson_build
    art = _artifacts(result)[Precision.INT8]
    m = onnx.load(str(art.path))
    assert check_qdq(m) == []
    assert art.metadata["int8"]["conformance"].startswith("passed")
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), n.name
        if n.op_type in ("Conv", "Gemm"):
            assert all(producer[i].op_type == "DequantizeLinear" for i in n.input[:2]), n.name
            assert n.input[2] in inits and inits[n.input[2]].dtype == np.float32  # float bias, no int32 DQ
            w_dq = producer[n.input[1]]
            assert inits[w_dq.input[1]].size == inits[w_dq.input[0]].shape[0]  # per output channel
        if n.op_type == "Add":
            assert all(producer[i].op_type == "DequantizeLinear" for i in n.input), "residual Add inputs"
    # Inputs only: the logits are not rounded to int8.
    assert producer[m.graph.output[0].name].op_type == "Gemm"
    assert not [n for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                and inits[n.input[0]].dtype == np.int32]


def test_bundle_manifest_and_readme(jetson_build):
    result, folder, _ = jetson_build
    bundle = json.loads((folder / "bundle.json").read_text())
    assert bundle["format"] == "edgec-tensorrt-bundle" and bundle["profile"] == "jetson-orin-nano"
    assert bundle["tensorrt_majors"] == [10] and bundle["device"]["compute_capability"] == ["8.7"]
    assert bundle["inputs"][0] | {} == {**bundle["inputs"][0], "min": [1, 3, 16, 16], "opt": [1, 3, 16, 16],
                                         "max": [8, 3, 16, 16]}
    assert set(bundle["precisions"]) == {"fp32", "fp16", "int8"}
    assert bundle["precisions"]["int8"]["engine"] == "model.int8.engine"
    # The same bundle can be derived from the build manifest alone (a folder without bundle.json).
    derived = bundle_mod.bundle_dict(folder, result.artifacts)
    assert derived["precisions"].keys() == bundle["precisions"].keys()
    readme = (folder / "README.md").read_text()
    assert "trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped" in readme
    assert "--minShapes=x:1x3x16x16 --optShapes=x:1x3x16x16 --maxShapes=x:8x3x16x16" in readme
    assert "--timingCacheFile=timing.cache" in readme
    assert "TensorRT 11" not in readme  # the Orin Nano's JetPacks ship TensorRT 10 only
    assert "off the device" in readme


def test_onnxruntime_estimate_of_int8_against_fp32(jetson_build):
    from edgec.benchmarks.harness import bench_artifacts

    result, _, rng = jetson_build
    feeds = [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(16)]
    res = bench_artifacts(result.artifacts, feeds, iterations=5, warmup=1)
    runs = {r.precision: r for r in res.runs}
    for r in runs.values():
        assert "off-device estimate" in r.runtime and "not a TensorRT measurement" in r.runtime
    int8 = runs["int8"].accuracy.per_output["output"].to_dict()
    assert runs["int8"].accuracy.reference.startswith("jetson-orin-nano/fp32")
    assert int8["cosine"] > 0.99 and int8["top1_agreement"] >= 90.0
    assert runs["fp16"].accuracy.per_output["output"].max_abs_error < 1e-2


def test_dla_profile_writes_dla_commands_for_10_and_11(jetson_build, tmp_path):
    result, _, _ = jetson_build
    fp32 = _artifacts(result)[Precision.FP32]
    model = OnnxModel(fp32.path, fp32.spec, {})
    target = TensorRTTarget(TensorRTOptions(device="jetson-agx-orin", dla_core=1, min_batch=1, max_batch=1))
    arts = [target.build(model, p, None, tmp_path)[0] for p in (Precision.FP32, Precision.FP16)]
    assert arts[0].metadata["dla"]["core"] is None and "FP16 and INT8 only" in arts[0].metadata["dla"]["why"]
    assert arts[1].metadata["dla"] == {**arts[1].metadata["dla"], "core": 1, "majors": [10, 11], "gpu_fallback": True}
    assert "note" not in arts[1].metadata["dla"]  # static batch: DLA can take it
    assert arts[1].metadata["fp16"]["range_check"].startswith("not run: no calibration data")
    target.finish_folder(tmp_path, arts)
    readme = (tmp_path / "README.md").read_text()
    ten, eleven = readme.split("### TensorRT 11", 1)
    assert "--saveEngine=model.fp16.engine --useDLACore=1 --allowGPUFallback --fp16" in ten
    assert "--saveEngine=model.fp32.engine --stronglyTyped" in ten  # fp32 stays on the GPU
    assert "--saveEngine=model.fp16.engine --useDLACore=1 --allowGPUFallback --minShapes=x:1x3x16x16" in eleven
    for removed in ("--fp16", "--int8", "--stronglyTyped"):
        assert removed not in eleven.split("```")[1]


def test_dla_on_a_profile_without_dla_is_refused():
    with pytest.raises(ConfigError, match="no DLA cores") as info:
        TensorRTTarget(TensorRTOptions(device="jetson-orin-nano", dla_core=0))
    assert "jetson-agx-orin" in info.value.hint
    with pytest.raises(ConfigError, match="has 2 DLA core"):
        TensorRTTarget(TensorRTOptions(device="jetson-agx-orin", dla_core=2))
    with pytest.raises(ConfigError, match="does not run TensorRT 11"):
        TensorRTTarget(TensorRTOptions(device="jetson-orin-nano", trt_major=11))


def test_dla_refused_at_plan_time_through_the_recipe(tmp_path):
    from edgec.api import plan_build
    from edgec.recipe import Recipe

    ckpt = tmp_path / "m.onnx"
    ckpt.write_bytes(b"")
    recipe = Recipe(checkpoint=str(ckpt), target=["thor"], precision=["fp16"], out=str(tmp_path / "o"),
                    target_options={"tensorrt": {"dla_core": 0}})
    with pytest.raises(ConfigError, match="'jetson-thor', which has no DLA") as info:
        plan_build(recipe)
    assert info.value.exit_code == 2


def _onnx_model(tmp_path: Path, nodes, inits, x_shape, y_shape, name="m.onnx") -> OnnxModel:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return OnnxModel(path, onnx_spec(model), {})


def test_fp16_keeps_out_of_range_ops_in_fp32(tmp_path):
    """x * 1e5 overflows FP16: the Mul and its consumer stay FP32 and the output stays finite."""
    inits = [numpy_helper.from_array(np.array(1e5, np.float32), "big"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "small")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "big"], ["m"], name="scale_up"),
             helper.make_node("Mul", ["m", "small"], ["s"], name="scale_down"),
             helper.make_node("Sigmoid", ["s"], ["y"], name="sigmoid")]
    model = _onnx_model(tmp_path, nodes, inits, [1, 16], [1, 16])
    rng = np.random.default_rng(0)
    calib = ArrayCalibrationSet([{"x": rng.standard_normal((1, 16)).astype(np.float32) + 1} for _ in range(8)])
    art = TensorRTTarget().build(model, Precision.FP16, calib, tmp_path)[0]
    kept = art.metadata["fp16"]["fp32_nodes"]
    assert set(kept) == {"scale_up", "scale_down"}, kept
    assert "reaches" in kept["scale_up"]
    from edgec.compiler.onnxutil import ort_session

    x = calib.samples[0]["x"]
    y16 = ort_session(art.path).run(None, {"x": x})[0]
    y32 = ort_session(model.path).run(None, {"x": x})[0]
    assert np.isfinite(y16).all() and np.abs(y16 - y32).max() < 1e-2


def test_unsupported_op_fails_the_build_naming_the_node(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Det", ["r"], ["y"], name="determinant")]
    model = _onnx_model(tmp_path, nodes, [], [2, 3, 3], [2])
    with pytest.raises(TargetBuildError, match=r"node 'determinant' \(Det\)"):
        TensorRTTarget().build(model, Precision.FP32, None, tmp_path)


def test_dynamic_axis_other_than_batch_needs_its_sizes(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = _onnx_model(tmp_path, nodes, [], ["N", "seq", 8], ["N", "seq", 8])
    with pytest.raises(ConfigError, match="dynamic axis 1 \\('seq'\\)") as info:
        TensorRTTarget().build(model, Precision.FP32, None, tmp_path)
    assert "dynamic_dims" in info.value.hint
    art = TensorRTTarget(TensorRTOptions(dynamic_dims={"seq": [1, 16, 64]})).build(model, Precision.FP32, None, tmp_path)[0]
    assert art.metadata["optimization_profile"]["x"] == {"min": [1, 1, 8], "opt": [1, 16, 8], "max": [8, 64, 8]}


def test_int8_weights_per_output_channel_for_matmul_and_convtranspose(tmp_path):
    """MatMul weights (K, N) go per column, ConvTranspose (C_in, C_out, kh, kw) on axis 1; bias Adds stay float."""
    from edgec.compiler.cache import BuildCache
    from edgec.compiler.context import BuildContext
    from edgec.compiler.stages.calibrate import CalibrateStage

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.array([1, 4, 2, 2], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "WT")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "B"], ["a"], name="bias_add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["m2"], name="matmul2"),
             helper.make_node("Reshape", ["m2", "shape"], ["img"], name="reshape"),
             helper.make_node("ConvTranspose", ["img", "WT"], ["y"], name="deconv")]
    model = _onnx_model(tmp_path, nodes, inits, [4, 16], [1, 6, 4, 4])
    calib = ArrayCalibrationSet([{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(10)])
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    stats = CalibrateStage("minmax").run({"onnx": model, "calibration": calib}, tmp_path, ctx)
    art = TensorRTTarget().build(model, Precision.INT8, stats, tmp_path)[0]
    q = onnx.load(str(art.path))
    assert check_qdq(q) == []
    axes = {n.input[0]: next(a.i for a in n.attribute if a.name == "axis") for n in q.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")}
    assert axes == {"W_quantized": 1, "W2_quantized": 1, "WT_quantized": 1}
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert add.input[1] == "B"  # a bias, not a residual: no Q/DQ
