"""TensorRT's QDQ rules on hand-built good and bad files: each violation names its rule and the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.errors import TargetBuildError
from edgec.targets.tensorrt import lint
from edgec.targets.tensorrt.conformance import RULES, assert_conformant, check_qdq


def _qdq_model(
    *,
    act_zp=np.int8(0),
    weight_zp_dtype=np.int8,
    weight_scales=4,
    weight_axis=0,
    weight_min=-127,
    opset=17,
    int32_bias=False,
    conv_input_qdq=True,
    residual_qdq=True,
    act_scale_const=True,
    act_scales=1,
    drop_act_zp=False,
):
    """x -> Q/DQ -> Conv(DQ weights) -> Relu -> [Q/DQ] -> Add(residual with the conv input's DQ) -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(4, 4, 3, 3)).astype(np.int8)
    w.flat[0] = weight_min
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(weight_scales, 0.01, np.float32).reshape(-1) if weight_scales > 1
                                else np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(weight_scales, weight_zp_dtype) if weight_scales > 1
                                else np.array(0, weight_zp_dtype), "w_zp"),
        numpy_helper.from_array(np.full(act_scales, 0.05, np.float32) if act_scales > 1
                                else np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.full(act_scales, act_zp, np.asarray(act_zp).dtype) if act_scales > 1
                                else np.asarray(act_zp), "x_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "r_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "r_zp"),
    ]
    nodes = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    if not act_scale_const:
        inits = [i for i in inits if i.name != "x_scale"]
        inputs.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    q_inputs = ["x", "x_scale"] if drop_act_zp else ["x", "x_scale", "x_zp"]
    axis_kw = {"axis": 1} if act_scales > 1 else {}
    nodes += [
        helper.make_node("QuantizeLinear", q_inputs, ["x_q"], name="x_quant", **axis_kw),
        helper.make_node("DequantizeLinear", ["x_q", *q_inputs[1:]], ["x_dq"], name="x_dequant", **axis_kw),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant",
                         **({"axis": weight_axis} if weight_scales > 1 else {})),
    ]
    conv_in = "x_dq" if conv_input_qdq else "x"
    conv_inputs = [conv_in, "w"]
    if int32_bias:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(4, 0.0005, np.float32), "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="bias_dequant", axis=0))
        conv_inputs.append("b")
    else:
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
        conv_inputs.append("b")
    nodes += [helper.make_node("Conv", conv_inputs, ["c"], name="conv0", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu0")]
    if residual_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["r", "r_scale", "r_zp"], ["r_q"], name="r_quant"),
                  helper.make_node("DequantizeLinear", ["r_q", "r_scale", "r_zp"], ["r_dq"], name="r_dequant")]
        add_in = ["r_dq", "x_dq"]
    else:
        add_in = ["r", "x_dq"]
    nodes.append(helper.make_node("Add", add_in, ["y"], name="residual_add"))
    graph = helper.make_graph(nodes, "qdq", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _rules(violations):
    return {(v.rule, v.node) for v in violations}


def test_a_conformant_model_passes(tmp_path):
    model = _qdq_model()
    onnx.checker.check_model(model)
    assert check_qdq(model) == []
    path = tmp_path / "good.onnx"
    onnx.save(model, str(path))
    assert_conformant(path)  # does not raise


@pytest.mark.parametrize(
    "kwargs, rule, node",
    [
        ({"act_zp": np.int8(3)}, "zero-point", "x_quant"),
        ({"act_zp": np.uint8(128)}, "int8", "x_quant"),
        ({"drop_act_zp": True}, "int8", "x_quant"),
        ({"int32_bias": True}, "int32-bias", "bias_dequant"),
        ({"weight_scales": 1}, "per-channel-weight", "w_dequant"),
        ({"weight_axis": 1}, "per-channel-weight", "w_dequant"),
        ({"weight_min": -128}, "weight-range", "w_dequant"),
        ({"conv_input_qdq": False}, "missing-qdq", "conv0"),
        ({"residual_qdq": False}, "missing-qdq", "residual_add"),
        ({"act_scale_const": False}, "constant-scale", "x_quant"),
        ({"act_scales": 4}, "per-tensor-activation", "x_quant"),
        ({"opset": 12}, "opset", ""),
    ],
)
def test_each_bad_file_names_its_rule_and_node(kwargs, rule, node):
    violations = check_qdq(_qdq_model(**kwargs))
    assert (rule, node) in _rules(violations), [str(v) for v in violations]
    assert all(v.rule in RULES for v in violations)


def test_uint8_weights_are_refused():
    violations = check_qdq(_qdq_model(weight_zp_dtype=np.uint8))
    assert ("int8", "w_dequant") in _rules(violations)


def test_per_tensor_weights_are_valid_tensorrt_but_not_the_flavour():
    model = _qdq_model(weight_scales=1)
    assert any(v.rule == "per-channel-weight" for v in check_qdq(model))
    assert check_qdq(model, require_per_channel=False) == []


def test_assert_conformant_names_the_node(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_qdq_model(act_zp=np.int8(5), int32_bias=True), str(path))
    with pytest.raises(TargetBuildError) as info:
        assert_conformant(path)
    assert "node 'x_quant' (QuantizeLinear)" in info.value.message
    assert "node 'bias_dequant' (DequantizeLinear)" in info.value.message
    assert "[zero-point]" in info.value.message and "[int32-bias]" in info.value.message


def test_unnamed_nodes_are_named_by_position():
    model = _qdq_model(conv_input_qdq=False)
    for n in model.graph.node:
        if n.op_type == "Conv":
            n.name = ""
    nodes = {v.node for v in check_qdq(model) if v.rule == "missing-qdq"}
    assert any(n.startswith("Conv#") for n in nodes), nodes


def test_onnxruntime_default_qdq_is_not_tensorrt_flavour(tmp_path):
    """ONNX Runtime's CPU defaults (uint8 asymmetric activations, int32 bias) break three rules at once."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv0"), helper.make_node("Relu", ["c"], ["y"], name="relu0")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, b],
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))

    class Reader:
        def __init__(self):
            self.it = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "u8.onnx"
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    rules = {v.rule for v in check_qdq(out)}
    assert {"int8", "int32-bias", "per-channel-weight"} <= rules, rules


def test_known_unsupported_ops_are_reported_per_node():
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("Det", ["m"], ["d"]),
             helper.make_node("FusedConv", ["x"], ["f"], name="fused", domain="com.microsoft")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("u", "d", "f")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    found = {(f.node, f.op_type) for f in lint.unsupported_nodes(model)}
    assert ("uniq", "Unique") in found and ("fused", "com.microsoft.FusedConv") in found
    assert any(node.startswith("Det#") for node, _ in found)
    assert lint.unsupported_nodes(_qdq_model()) == []


needs_rtx = pytest.mark.skipif(not lint.rtx_available(), reason="tensorrt-rtx is not installed (pip install 'edgec[trt-lint]')")


@needs_rtx
def test_rtx_lint_rejects_a_nonzero_zero_point_and_names_the_node(tmp_path):
    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(_qdq_model(act_zp=np.int8(3)), str(bad))
    onnx.save(_qdq_model(), str(good))
    version, findings = lint.rtx_lint(bad)
    assert version.startswith("tensorrt-rtx")
    assert findings and findings[0].node in ("x_quant", "x_dequant"), findings
    assert lint.rtx_lint(good)[1] == []


@needs_rtx
def test_rtx_lint_names_unsupported_nodes(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0"), helper.make_node("Unique", ["c"], ["y"], name="uniq0")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )
    path = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _, findings = lint.rtx_lint(path)
    assert [(f.node, f.op_type) for f in findings] == [("uniq0", "Unique")]
    report = lint.lint(path)
    assert report["rtx"]["ran"] and report["rtx"]["rejected"][0]["node"] == "uniq0"
