"""The onnxruntime target on the trained digits CNN: accuracy, fusion, flavours, shared calibration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgec.calibration_data import load_dataset
from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext
from edgec.compiler.onnxutil import ort_session
from edgec.compiler.pipeline import Pipeline
from edgec.compiler.stages.calibrate import CalibrateStage
from edgec.compiler.stages.export import ExportStage
from edgec.compiler.stages.load import LoadStage, checkpoint_key
from edgec.compiler.types import Precision
from edgec.targets.onnxruntime.target import (
    OnnxRuntimeOptions,
    OnnxRuntimeTarget,
    host_has_vnni,
    resolve_reduce_range,
)
from edgec.targets.qdq import quantize_qdq


@pytest.fixture(scope="module")
def prepared(digits_assets, tmp_path_factory):
    """The digits CNN exported and calibrated once for the module."""
    work = tmp_path_factory.mktemp("ort-target")
    ctx = BuildContext(work_dir=work, cache=BuildCache(enabled=False))
    p = Pipeline(ctx)
    ckpt = digits_assets["checkpoint"]
    p.seed("checkpoint", ckpt, checkpoint_key(ckpt))
    p.add(LoadStage(ckpt))
    p.add(ExportStage())
    onnx_model = p.value("onnx")
    calib = load_dataset(digits_assets["calib"], onnx_model.spec)
    p.seed("calibration", calib, calib.fingerprint)
    p.add(CalibrateStage("minmax"))
    stats = p.value("calibration_stats")
    evaluation = load_dataset(digits_assets["eval"], onnx_model.spec, role="evaluation", labels=digits_assets["eval_labels"])
    return onnx_model, stats, evaluation, work


def _predict(path, evaluation, name):
    s = ort_session(path)
    return np.concatenate([s.run(None, {name: f[name]})[0] for f in evaluation.samples])


def _build(target, precision, prepared, sub):
    onnx_model, stats, _, work = prepared
    out = work / sub
    out.mkdir(exist_ok=True)
    return target.build(onnx_model, precision, stats, out)[0]


def test_fp32_fp16_int8_accuracy_and_fusion(prepared):
    onnx_model, _, evaluation, _ = prepared
    name = onnx_model.spec.input_names[0]
    target = OnnxRuntimeTarget()
    arts = {p: _build(target, p, prepared, "default") for p in Precision}
    logits = {p: _predict(a.path, evaluation, name) for p, a in arts.items()}
    labels = evaluation.labels
    fp32_pred = logits[Precision.FP32].argmax(1)
    assert (fp32_pred == labels).mean() > 0.97
    assert np.abs(logits[Precision.FP16] - logits[Precision.FP32]).max() < 0.05
    agreement = (logits[Precision.INT8].argmax(1) == fp32_pred).mean() * 100
    drop = ((fp32_pred == labels).mean() - (logits[Precision.INT8].argmax(1) == labels).mean()) * 100
    assert agreement >= 99.0, agreement
    assert drop <= 1.0, drop
    fusion = arts[Precision.INT8].metadata["fusion"]
    assert fusion["float"] == 0 and fusion["int8"] >= 5, fusion
    assert arts[Precision.INT8].metadata["flavour"] == "U8S8"
    # FP16 keeps float32 inputs and outputs, so callers need not convert.
    m16 = onnx.load(str(arts[Precision.FP16].path))
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m16.graph.initializer)
    onnx.checker.check_model(m16, full_check=True)


def test_u8s8_qdq_layout(prepared):
    art = _build(OnnxRuntimeTarget(), Precision.INT8, prepared, "u8s8")
    m = onnx.load(str(art.path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    assert all(inits[n.input[2]].dtype == np.uint8 for n in q_nodes if len(n.input) > 2 and n.input[2] in inits)
    weight_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].ndim == 4]
    assert weight_dq and all(inits[n.input[0]].dtype == np.int8 for n in weight_dq)
    # Per-channel: one scale per output channel.
    assert all(inits[n.input[1]].size == inits[n.input[0]].shape[0] for n in weight_dq)


def test_s8s8_flavour_from_the_same_statistics(prepared):
    onnx_model, stats, _, work = prepared
    before = stats.path.read_bytes()
    art = _build(OnnxRuntimeTarget(OnnxRuntimeOptions(int8_activation="int8")), Precision.INT8, prepared, "s8s8")
    assert art.metadata["flavour"] == "S8S8"
    m = onnx.load(str(art.path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 for z in zps)
    # The statistics file is read, never rewritten: calibration ran once for both flavours.
    assert stats.path.read_bytes() == before


def test_quantize_needs_no_calibration_data(prepared, tmp_path):
    """The shared statistics are enough to quantize: no data reader is passed at all."""
    onnx_model, stats, evaluation, _ = prepared
    out = tmp_path / "q.onnx"
    quantize_qdq(stats, onnx_model.path, out, activation="uint8", reduce_range=True)
    name = onnx_model.spec.input_names[0]
    assert _predict(out, evaluation, name).shape == (len(evaluation), 10)


def test_reduce_range_resolution():
    assert resolve_reduce_range(True)[0] is True
    assert resolve_reduce_range(False)[0] is False
    value, reason = resolve_reduce_range("auto")
    vnni = host_has_vnni()
    if vnni is not None:
        assert value is (not vnni)
    assert reason.startswith("auto")
    assert OnnxRuntimeTarget().options.reduce_range in (True, False)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(prepared, tmp_path, method):
    onnx_model, _, evaluation, _ = prepared
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    stats = CalibrateStage(method).run({"onnx": onnx_model, "calibration": evaluation}, tmp_path, ctx)
    assert stats.method == method and stats.tensors > 5
    art = OnnxRuntimeTarget().build(onnx_model, Precision.INT8, stats, tmp_path)[0]
    assert art.metadata["calibration_method"] == method


def test_dynamic_int8_keeps_an_excluded_gemm_in_float(tmp_path):
    """ONNX Runtime's dynamic quantizer rewrites Gemm G into MatMul G_MatMul before it matches nodes_to_exclude:
    a Gemm the fallback keeps in float (an encoder's linear layers are Gemms) must still be left alone."""
    from onnx import TensorProto, helper

    from edgec.targets.qdq import quantize_dynamic_int8

    rng = np.random.default_rng(0)
    inits = []
    nodes = []
    for i, src in enumerate(("x", "h0")):
        w, b = f"w{i}", f"b{i}"
        inits += [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), w),
                  numpy_helper.from_array(rng.normal(size=16).astype(np.float32), b)]
        nodes.append(helper.make_node("Gemm", [src, w, b], [f"h{i}"], name=f"gemm{i}", transB=1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("h1", TensorProto.FLOAT, [2, 16])], inits)
    src = tmp_path / "gemms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    for exclude, integer_ops in (([], 2), (["gemm1"], 1), (["gemm0", "gemm1"], 0)):
        out = tmp_path / f"dyn{len(exclude)}.onnx"
        quantize_dynamic_int8(src, out, exclude=exclude)
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert ops.count("MatMulInteger") == integer_ops, (exclude, ops)
    x = rng.normal(size=(2, 16)).astype(np.float32)
    want = ort_session(src).run(None, {"x": x})[0]
    got = ort_session(tmp_path / "dyn2.onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _linear_pair(tmp_path, rng):
    """x [1, 16, 32] -> Gemm-free MatMul (W0 [32, 24]) and MatMul through a shared input (W1 [32, 8]): two linear
    layers reading one tensor, as Q/K/V read one LayerNorm output."""
    from onnx import TensorProto, helper

    w0 = rng.normal(0, 0.2, (32, 24)).astype(np.float32)
    w1 = rng.normal(0, 0.2, (32, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["y0"], name="mm0"),
             helper.make_node("MatMul", ["x", "w1"], ["y1"], name="mm1"),
             helper.make_node("Concat", ["y0", "y1"], ["y"], name="cat", axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32])],
                              [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")])
    path = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_smoothing_is_exact_in_float_and_cuts_dynamic_int8_error(tmp_path):
    """Activations with outlier channels (a transformer's LayerNorm output has a few): smoothing leaves the float
    model's outputs as they were and brings dynamic INT8 (one activation scale per call) twice as close."""
    from edgec.targets.qdq import quantize_dynamic_int8, smooth_linear_inputs

    rng = np.random.default_rng(0)
    src = _linear_pair(tmp_path, rng)
    gain = np.ones(32, np.float32)
    gain[[3, 17]] = 60.0  # two outlier channels

    def batch(n):
        return [(rng.normal(size=(1, 16, 32)) * gain).astype(np.float32) for _ in range(n)]

    calib, held = batch(16), batch(8)
    maxima = tmp_path / "channel_max.npz"
    np.savez(maxima, t0=np.max([np.abs(x).reshape(-1, 32).max(0) for x in calib], axis=0), names=np.array(["x"]))
    smoothed = tmp_path / "smoothed.onnx"
    done = smooth_linear_inputs(src, maxima, smoothed, alpha=0.8)
    assert list(done) == ["x"] and done["x"]["name"] == "x_smoothed"
    ops = [n.op_type for n in onnx.load(str(smoothed)).graph.node]
    assert ops.count("Mul") == 1 and ops.count("MatMul") == 2  # one scale for the tensor both layers read
    ref, smo = ort_session(src), ort_session(smoothed)
    for x in held:
        np.testing.assert_allclose(smo.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)

    def int8_error(path):
        out = tmp_path / f"{path.stem}.int8.onnx"
        quantize_dynamic_int8(path, out)
        q = ort_session(out)
        err = [np.linalg.norm(q.run(None, {"x": x})[0] - ref.run(None, {"x": x})[0]) /
               np.linalg.norm(ref.run(None, {"x": x})[0]) for x in held]
        return float(np.mean(err))

    plain, smooth = int8_error(src), int8_error(smoothed)
    assert smooth < plain / 2, (plain, smooth)  # measured 0.0169 -> 0.0076


def test_smooth_alpha_is_checked():
    from edgec.compiler.errors import ConfigError
    from edgec.targets.base import parse_options
    from edgec.targets.onnxruntime.target import OnnxRuntimeOptions

    assert parse_options(OnnxRuntimeOptions, {"smooth_alpha": 0}, "cpu").smooth_alpha == 0
    with pytest.raises(ConfigError, match="smooth_alpha=1.5") as err:
        parse_options(OnnxRuntimeOptions, {"smooth_alpha": 1.5}, "cpu")
    assert "from 0 to 1" in err.value.hint


def test_a_layer_kept_in_float_keeps_its_activation_in_float(tmp_path):
    """SiLU (Conv -> Sigmoid, Mul): ONNX Runtime's QDQ quantizer quantizes a Sigmoid on its own, so keeping the
    Conv and the Mul (what the ranking names) in float would still round the Conv's output through the Sigmoid's
    Q/DQ (on a real YOLOX detector the
    fallback could not get under budget with every ranked layer kept, until the activations went along)."""
    from onnx import TensorProto, helper

    from edgec.compiler.onnxutil import with_activations
    from edgec.compiler.stages.calibrate import CalibrateStage
    from edgec.compiler.stages.load import onnx_spec
    from edgec.compiler.types import ArrayCalibrationSet, OnnxModel
    from edgec.targets.onnxruntime.target import OnnxRuntimeOptions, OnnxRuntimeTarget

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):  # the last layer is the float tail: conv1 is the one to keep
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"silu{i}")]
        x = f"a{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert with_activations(model, ["conv1"]) == ["conv1", "sig1"]  # the Mul reads it too, but is no activation
    path = tmp_path / "silu.onnx"
    onnx.save(model, path)
    onnx_model = OnnxModel(path, onnx_spec(model), {})
    samples = ArrayCalibrationSet([{"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)} for _ in range(8)])
    ctx = BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False))
    stats = CalibrateStage().run({"onnx": onnx_model, "calibration": samples}, tmp_path, ctx)
    target = OnnxRuntimeTarget(OnnxRuntimeOptions()).keep_in_higher_precision(["conv1", "silu1"])
    (tmp_path / "out").mkdir()
    (art,) = target.build(onnx_model, Precision.INT8, stats, tmp_path / "out")
    q = onnx.load(str(art.path))
    producer = {o: n.op_type for n in q.graph.node for o in n.output}
    by_name = {n.name: n for n in q.graph.node}
    assert producer[by_name["sig1"].input[0]] == "Conv"  # float straight from the float Conv
    assert producer[by_name["sig0"].input[0]] == "DequantizeLinear"  # the other layer stays quantized
    assert producer[by_name["silu1"].input[1]] == "Sigmoid"
    assert {"conv1", "sig1", "silu1"} <= set(art.metadata["kept_float"])


def test_a_constant_scale_read_only_by_a_kept_layer_is_kept_with_it():
    """The planted outlier net's ``x * scale -> conv``: quantized, the scale's output rounds the kept conv's input
    with the range the scale made; shared with a layer that stays INT8, it stays quantized."""
    from onnx import TensorProto, helper

    from edgec.compiler.onnxutil import with_activations

    def model(shared: bool):
        nodes = [helper.make_node("Mul", ["x", "s"], ["m"], name="scale"),
                 helper.make_node("Conv", ["m", "w"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["y"], name="relu")]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        if shared:
            nodes.append(helper.make_node("Conv", ["m", "w"], ["c2"], name="other"))
            outputs.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
        inits = [numpy_helper.from_array(np.full((1, 4, 1, 1), 200, np.float32), "s"),
                 numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                                  outputs, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert with_activations(model(False), ["conv"]) == ["conv", "relu", "scale"]
    assert with_activations(model(True), ["conv"]) == ["conv", "relu"]
