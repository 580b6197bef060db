"""Output tasks: declarations, their checks against the outputs' shapes, and inference from small ONNX graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgec.compiler.errors import ConfigError
from edgec.compiler.tasks import (
    ALL_TASKS,
    GENERIC,
    OPTIONS,
    TASKS,
    OutputTask,
    detection_layout,
    parse_declaration,
    resolve_tasks,
)
from edgec.compiler.types import InputSpec, TensorSpec
from usererrors import raises_user_error

onnx = pytest.importorskip("onnx", reason="graph inference tests need 'onnx' (pip install 'edgec[onnx]')")
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def spec(*outputs: tuple) -> InputSpec:
    return InputSpec((TensorSpec("x", ("N", 16)),), tuple(TensorSpec(*o) for o in outputs))


# ---------------------------------------------------------------------------------------------------------------
# Declarations


def test_parse_declarations():
    assert parse_declaration("output0=detection:layout=cxcywh,boxes=0:4,scores=4:84,anchor_axis=2") == (
        "output0", "detection", {"layout": "cxcywh", "boxes": (0, 4), "scores": (4, 84), "anchor_axis": 2})
    assert parse_declaration("logits=classification:axis=1") == ("logits", "classification", {"axis": 1})
    assert parse_declaration("emb=embedding") == ("emb", "embedding", {})
    # a TF-style output name with a colon, booleans, none
    assert parse_declaration("Identity:0=dense:axis=none,probabilities=false") == (
        "Identity:0", "dense", {"axis": None, "probabilities": False})
    assert parse_declaration("ctc=sequence:decode=argmax,blank=5") == ("ctc", "sequence",
                                                                       {"decode": "argmax", "blank": 5})


@pytest.mark.parametrize(("text", "pattern"), [
    ("logits", r"cannot parse task declaration 'logits'[\s\S]*NAME=TASK"),
    ("=classification", r"cannot parse task declaration '=classification'"),
    ("logits=", r"cannot parse task declaration 'logits='"),
    ("logits=classifier", (r"unknown task 'classifier' in task declaration 'logits=classifier'[\s\S]*"
                           r"classification, multilabel, regression, embedding, detection, dense, sequence, generic")),
    ("logits=classification:classes=10", (r"unknown option 'classes' for task classification in task declaration "
                                          r"'logits=classification:classes=10'[\s\S]*axis, probabilities")),
    ("emb=embedding:axis", r"cannot parse option 'axis' in task declaration 'emb=embedding:axis'"),
    ("out=detection:boxes=4", r"bad value '4' for option boxes[\s\S]*START:STOP"),
    ("out=detection:layout=xywh", r"bad value 'xywh' for option layout.*cxcywh, xyxy"),
    ("logits=classification:axis=one", r"bad value 'one' for option axis.*integer"),
    ("logits=classification:axis=1,axis=2", r"option 'axis' given twice"),
    ("y=regression:axis=1", r"unknown option 'axis' for task regression[\s\S]*takes no options"),
])
def test_bad_declarations_are_config_errors(text, pattern):
    with raises_user_error(ConfigError, pattern) as info:
        parse_declaration(text)
    assert info.value.exit_code == 2


def test_declarations_win_and_are_checked_against_shapes():
    s = spec(("boxes", ("N", 4)), ("probs", ("N", 2)), ("output0", ("N", 84, "anchors")))
    tasks = resolve_tasks(s, ["probs=classification:probabilities=true", "output0=detection"])
    assert [t.task for t in tasks] == ["regression", "classification", "detection"]
    det = tasks[2]
    # shape-dependent defaults filled in: the dynamic axis holds the anchors, scores after the boxes
    assert det.option("anchor_axis") == 2 and det.option("scores") == (4, 84) and det.source == "declared"
    assert tasks[1].option("probabilities") is True and tasks[1].option("axis") == -1
    # the recipe form
    tasks = resolve_tasks(s, {"probs": "multilabel", "output0": {"task": "detection", "anchor_axis": 2}})
    assert tasks[1].task == "multilabel" and tasks[2].option("anchor_axis") == 2


@pytest.mark.parametrize(("declared", "pattern"), [
    (["logit=classification"], r"output 'logit', which the model does not have[\s\S]*probs \[N, 2\]"),
    (["probs=classification:axis=2"], r"output 'probs' has shape \[N, 2\]: it has no axis 2"),
    (["probs=classification:axis=0"], r"output 'probs' has shape \[N, 2\]: it has no axis 0"),
    (["probs=detection"], r"output 'probs' has shape \[N, 2\]: a detection output must be 3-D"),
    (["det=detection:scores=4:90"], (r"output 'det' has shape \[N, 84, 8400\]: boxes 0:4, scores 4:90 do not "
                                     r"fit its 84 channels on axis 1")),
    (["det=detection:anchor_axis=0"], r"output 'det' has shape \[N, 84, 8400\]: it has no anchor_axis 0"),
    (["det=detection:boxes=0:5"], r"boxes=0:5 for output 'det' is not 4 channels"),
    (["seq=sequence:time_axis=2"], r"output 'seq': time_axis and axis are both 2"),
    (["probs=classification", "probs=multilabel"], r"output 'probs' has two task declarations"),
    ({"probs": 3}, r"cannot read the task declared for output 'probs'"),
])
def test_declarations_that_do_not_fit_name_the_output(declared, pattern):
    s = spec(("probs", ("N", 2)), ("det", ("N", 84, 8400)), ("seq", ("N", 50, 30)))
    with raises_user_error(ConfigError, pattern):
        resolve_tasks(s, declared)


def test_detection_on_a_square_shape_needs_the_anchor_axis():
    with raises_user_error(ConfigError, r"output 'det' has shape \[N, C, A\]: cannot tell which axis holds the "
                                        r"anchors[\s\S]*det=detection:anchor_axis=1"):
        detection_layout(OutputTask("det", "detection"), ("N", "C", "A"))
    s = spec(("det", (1, 20, 20)))
    # equal static sizes: the larger-axis rule picks axis 2 consistently, a declaration overrides it
    assert resolve_tasks(s, ["det=detection"])[0].option("anchor_axis") == 2
    assert resolve_tasks(s, ["det=detection:anchor_axis=1"])[0].option("anchor_axis") == 1


def test_output_task_round_trip_and_describe():
    task = resolve_tasks(spec(("output0", (1, 84, 8400))),
                         ["output0=detection:objectness=4,scores=5:84"])[0]
    d = json.loads(json.dumps(task.to_dict()))
    assert OutputTask.from_dict(d) == task
    assert hash(task) == hash(OutputTask.from_dict(d))
    assert task.describe() == ("output0: detection (cxcywh boxes 0:4, scores 5:84, objectness 4, anchors on axis 2;"
                               " declared)")
    with pytest.raises(ConfigError, match="unknown option 'axis' for task detection"):
        OutputTask("output0", "detection", {"axis": 1})
    with pytest.raises(ConfigError, match="unknown task 'boxes'"):
        OutputTask("output0", "boxes")


def test_every_task_has_an_options_entry():
    assert set(OPTIONS) == set(ALL_TASKS) and ALL_TASKS == (*TASKS, GENERIC)
    for task, table in OPTIONS.items():
        OutputTask("y", task)  # every default is a valid value
        for key, opt in table.items():
            assert opt.description, f"{task}.{key} has no description"


# ---------------------------------------------------------------------------------------------------------------
# Inference from graphs


def make_model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
         for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def resolve(model, declared=(), has_labels=False):
    outs = tuple(
        TensorSpec(o.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                                 for d in o.type.tensor_type.shape.dim))
        for o in model.graph.output
    )
    return resolve_tasks(InputSpec((TensorSpec("x", ("N", 16)),), outs), list(declared), model, has_labels)


def gemm(x, out, n, name):
    return helper.make_node("Gemm", [x, f"{name}_w"], [out], transB=1), (f"{name}_w", w(n, 16))


@pytest.mark.parametrize(("op", "task", "probabilities"), [("Softmax", "classification", True),
                                                           ("LogSoftmax", "classification", False)])
def test_softmax_head_is_classification(op, task, probabilities):
    g, init = gemm("x", "z", 10, "fc")
    # a Flatten and an Identity between the softmax and the output keep its evidence
    nodes = [g, helper.make_node(op, ["z"], ["p"], axis=-1), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Identity", ["f"], ["probs"])]
    (t,) = resolve(make_model(nodes, [("x", ["N", 16])], [("probs", ["N", 10])], [init]))
    assert (t.task, t.option("axis"), t.option("probabilities")) == (task, 1, probabilities)
    assert t.source.startswith("inferred: ") and "softmax over axis 1" in t.source


def test_sigmoid_head_is_multilabel():
    g, init = gemm("x", "z", 5, "fc")
    (t,) = resolve(make_model([g, helper.make_node("Sigmoid", ["z"], ["y"])], [("x", ["N", 16])],
                              [("y", ["N", 5])], [init]))
    assert t.task == "multilabel" and t.option("probabilities") is True and "sigmoid" in t.source


def detector(order: str, transpose: bool, classes: int = 3):
    """feat [N, 16, A] -> concat(centers, sizes, sigmoid scores) along channels, as YOLO heads do."""
    nodes = [
        helper.make_node("Slice", ["x", "s0", "s2", "ax1"], ["xy_raw"]),
        helper.make_node("Slice", ["x", "s2", "s4", "ax1"], ["wh_raw"]),
        helper.make_node("Slice", ["x", "s4", "s7", "ax1"], ["cls_raw"]),
        helper.make_node("Mul", ["xy_raw", "stride"], ["xy"]),
        helper.make_node("Exp", ["wh_raw"], ["wh"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"]),
    ]
    parts = ["xy", "wh", "scores"] if order == "boxes_first" else ["scores", "xy", "wh"]
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
    if transpose:
        nodes.append(helper.make_node("Transpose", ["cat"], ["output0"], perm=[0, 2, 1]))
        out = ["N", "A", 4 + classes]
    else:
        nodes.append(helper.make_node("Identity", ["cat"], ["output0"]))
        out = ["N", 4 + classes, "A"]
    inits = [("s0", [0]), ("s2", [2]), ("s4", [4]), ("s7", [4 + classes]), ("ax1", [1]),
             ("stride", np.float32(8.0))]
    return make_model(nodes, [("x", ["N", 16, "A"])], [("output0", out)], inits)


@pytest.mark.parametrize(("order", "transpose", "anchor_axis", "boxes", "scores"), [
    ("boxes_first", False, 2, (0, 4), (4, 7)),
    ("boxes_first", True, 1, (0, 4), (4, 7)),
    ("scores_first", False, 2, (3, 7), (0, 3)),
])
def test_concat_of_boxes_and_sigmoid_scores_is_detection(order, transpose, anchor_axis, boxes, scores):
    (t,) = resolve(detector(order, transpose))
    assert t.task == "detection"
    assert (t.option("anchor_axis"), t.option("boxes"), t.option("scores")) == (anchor_axis, boxes, scores)
    assert t.option("layout") == "cxcywh"
    assert t.describe() == (f"output0: detection (cxcywh boxes {boxes[0]}:{boxes[1]}, scores {scores[0]}:{scores[1]}"
                            f", anchors on axis {anchor_axis}; inferred: concat of boxes and sigmoid scores)")


def test_multi_level_head_concatenated_along_anchors_is_detection():
    """Two levels, each concat(boxes, sigmoid scores) along channels, then concatenated along the anchors."""
    nodes, inits = [], []
    for lvl in ("a", "b"):
        nodes += [
            helper.make_node("Slice", [f"x{lvl}", "s0", "s4", "ax1"], [f"box_{lvl}"]),
            helper.make_node("Slice", [f"x{lvl}", "s4", "s6", "ax1"], [f"raw_{lvl}"]),
            helper.make_node("Sigmoid", [f"raw_{lvl}"], [f"sc_{lvl}"]),
            helper.make_node("Concat", [f"box_{lvl}", f"sc_{lvl}"], [f"cat_{lvl}"], axis=1),
        ]
    nodes.append(helper.make_node("Concat", ["cat_a", "cat_b"], ["output0"], axis=2))
    inits = [("s0", [0]), ("s4", [4]), ("s6", [6]), ("ax1", [1])]
    model = make_model(nodes, [("xa", ["N", 8, 64]), ("xb", ["N", 8, 16])], [("output0", ["N", 6, 80])], inits)
    (t,) = resolve(model)
    assert (t.task, t.option("anchor_axis"), t.option("scores")) == ("detection", 2, (4, 6))


def test_concat_without_a_sigmoid_part_is_not_detection():
    nodes = [helper.make_node("Slice", ["x", "s0", "s4", "ax1"], ["a"]),
             helper.make_node("Slice", ["x", "s4", "s7", "ax1"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["output0"], axis=1)]
    model = make_model(nodes, [("x", ["N", 16, "A"])], [("output0", ["N", 7, "A"])],
                       [("s0", [0]), ("s4", [4]), ("s7", [7]), ("ax1", [1])])
    (t,) = resolve(model)
    assert t.task == GENERIC


def test_lp_normalization_is_embedding():
    g, init = gemm("x", "z", 32, "fc")
    (t,) = resolve(make_model([g, helper.make_node("LpNormalization", ["z"], ["emb"], axis=1, p=2)],
                              [("x", ["N", 16])], [("emb", ["N", 32])], [init]))
    assert (t.task, t.option("axis")) == ("embedding", 1) and "LpNormalization" in t.source


@pytest.mark.parametrize("norm", ["ReduceL2", "SqrtSumSquares", "Reciprocal"])
def test_division_by_an_l2_norm_is_embedding(norm):
    g, init = gemm("x", "z", 64, "fc")
    nodes = [g]
    inits = [init, ("eps", np.float32(1e-12)), ("axes", [1])]
    if norm == "SqrtSumSquares":
        nodes += [helper.make_node("Mul", ["z", "z"], ["sq"]),
                  helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
                  helper.make_node("Sqrt", ["ss"], ["n"])]
    else:
        nodes.append(helper.make_node("ReduceL2", ["z"], ["n"], axes=[1], keepdims=1))
    # torch's F.normalize: x / clamp_min(norm, eps).expand_as(x)
    nodes += [helper.make_node("Max", ["n", "eps"], ["nc"]), helper.make_node("Shape", ["z"], ["zs"]),
              helper.make_node("Expand", ["nc", "zs"], ["ne"])]
    if norm == "Reciprocal":
        nodes += [helper.make_node("Reciprocal", ["ne"], ["inv"]), helper.make_node("Mul", ["z", "inv"], ["emb"])]
    else:
        nodes.append(helper.make_node("Div", ["z", "ne"], ["emb"]))
    (t,) = resolve(make_model(nodes, [("x", ["N", 16])], [("emb", ["N", 64])], inits))
    assert (t.task, t.option("axis")) == ("embedding", 1) and "L2-normalised" in t.source


def test_division_by_something_else_is_not_embedding():
    g, init = gemm("x", "z", 64, "fc")
    nodes = [g, helper.make_node("ReduceMax", ["z"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Div", ["z", "m"], ["emb"])]
    (t,) = resolve(make_model(nodes, [("x", ["N", 16])], [("emb", ["N", 64])], [init]))
    assert t.task == GENERIC and "declare emb=classification or emb=embedding" in t.source


def conv_map(op: str, channels: int, **attrs):
    nodes = [helper.make_node("Conv", ["img", "cw"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["map"], **attrs)]
    return make_model(nodes, [("img", ["N", 3, "H", "W"])], [("map", ["N", channels, "H", "W"])],
                      [("cw", w(channels, 3, 3, 3))])


def test_sigmoid_map_is_dense():
    (t,) = resolve(conv_map("Sigmoid", 1))
    assert (t.task, t.option("axis"), t.option("exclusive")) == ("dense", 1, False)
    assert "sigmoid of a 4-D map" in t.source


def test_softmax_map_over_channels_is_dense_with_argmax():
    (t,) = resolve(conv_map("Softmax", 5, axis=1))
    assert (t.task, t.option("axis"), t.option("exclusive"), t.option("probabilities")) == ("dense", 1, True, True)


def test_softmax_over_1x1_map_is_classification():
    nodes = [helper.make_node("Conv", ["img", "cw"], ["c"], kernel_shape=[8, 8]),
             helper.make_node("Softmax", ["c"], ["p"], axis=1)]
    model = make_model(nodes, [("img", ["N", 3, 8, 8])], [("p", ["N", 10, 1, 1])], [("cw", w(10, 3, 8, 8))])
    (t,) = resolve(model)
    assert (t.task, t.option("axis")) == ("classification", 1)


def test_time_sequence_log_softmax_is_ctc_sequence():
    nodes = [helper.make_node("MatMul", ["x", "proj"], ["z"]), helper.make_node("LogSoftmax", ["z"], ["logp"], axis=2)]
    model = make_model(nodes, [("x", ["N", "T", 16])], [("logp", ["N", "T", 30])], [("proj", w(16, 30))])
    (t,) = resolve(model)
    assert (t.task, t.option("decode"), t.option("blank"), t.option("axis")) == ("sequence", "ctc", 0, 2)
    assert t.option("probabilities") is False


def test_box_regression_beside_softmax_is_regression_and_classification():
    """A face-cascade head: box regression [N, 4] and a 2-way softmax [N, 2]."""
    g1, i1 = gemm("x", "box", 4, "reg")
    g2, i2 = gemm("x", "z", 2, "cls")
    nodes = [g1, g2, helper.make_node("Softmax", ["z"], ["prob"], axis=1)]
    model = make_model(nodes, [("x", ["N", 16])], [("box", ["N", 4]), ("prob", ["N", 2])], [i1, i2])
    box, prob = resolve(model)
    assert (box.task, prob.task) == ("regression", "classification")
    assert "beside a classification output" in box.source and prob.option("probabilities") is True


def test_declaration_overrides_graph_evidence():
    g, init = gemm("x", "z", 10, "fc")
    model = make_model([g, helper.make_node("Softmax", ["z"], ["probs"], axis=1)], [("x", ["N", 16])],
                       [("probs", ["N", 10])], [init])
    (t,) = resolve(model, ["probs=generic"])
    assert (t.task, t.source) == (GENERIC, "declared")


@pytest.mark.parametrize(("outputs", "has_labels", "tasks"), [
    ((("logits", ("N", 10)),), False, ["classification"]),
    ((("logits", ("N", 1000)),), True, ["classification"]),
    ((("feat", ("N", 512)),), False, [GENERIC]),
    ((("idx", ("N",), "int64"),), False, [GENERIC]),
    ((("score", ("N", 1)),), False, [GENERIC]),
    ((("a", ("N", 10)), ("b", ("N", 4))), False, [GENERIC, GENERIC]),
])
def test_shape_rules_without_a_graph(outputs, has_labels, tasks):
    got = resolve_tasks(spec(*outputs), [], None, has_labels)
    assert [t.task for t in got] == tasks
    assert all(t.source.startswith("inferred: ") for t in got)


def test_integer_output_stays_generic_even_with_a_graph():
    nodes = [helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (t,) = resolve_tasks(InputSpec((TensorSpec("x", ("N", 16)),), (TensorSpec("idx", ("N",), "int64"),)), [], model)
    assert t.task == GENERIC and "int64" in t.source


def test_zoo_models_exported_by_torch(tmp_path):
    """The zoo's real-structure models through torch's ONNX exporter: a YOLO-style head with dynamic H/W (its
    class count unknown until run), a face-cascade RNet (box regression + softmax) and PNet (softmax map), and a
    BERT-style encoder ending in F.normalize."""
    torch = pytest.importorskip("torch")
    import zoo

    def exported(module, example, path):
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17)
        return onnx.load(str(path))

    def tasks_of(model):
        outs = tuple(TensorSpec(o.name, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                              for d in o.type.tensor_type.shape.dim)) for o in model.graph.output)
        return resolve_tasks(InputSpec((), outs), [], model)

    (det,) = tasks_of(onnx.load(str(zoo.yolo_style_onnx(tmp_path / "yolo.onnx"))))
    assert det.describe() == ("output0: detection (cxcywh boxes 0:4, scores after the boxes, anchors on axis 2; "
                              "inferred: concat of boxes and sigmoid scores)")
    torch.manual_seed(0)
    box, prob = tasks_of(exported(zoo.CascadeRNet(), zoo.CascadeRNet.example_inputs, tmp_path / "rnet.onnx"))
    assert (box.task, prob.task, prob.option("axis")) == ("regression", "classification", 1)
    box_map, prob_map = tasks_of(exported(zoo.CascadePNet(), zoo.CascadePNet.example_inputs, tmp_path / "pnet.onnx"))
    assert (box_map.task, prob_map.task, prob_map.option("exclusive")) == (GENERIC, "dense", True)
    (emb,) = tasks_of(exported(zoo.BertStyle(), zoo.BertStyle.example_inputs, tmp_path / "bert.onnx"))
    assert (emb.task, emb.option("axis")) == ("embedding", 1)
