"""The tflite (arm) target: real litert-torch conversions run on real LiteRT, on the trained digits CNN and
small zoo models. Each model is converted once per module; the CLI test builds and benches through `edgec`."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zoo_models
from edgec.calibration_data import load_dataset
from edgec.compiler.errors import ConfigError, ExportError, TargetUnavailableError
from edgec.compiler.modelio import torch_run
from edgec.compiler.stages.load import load_checkpoint
from edgec.compiler.types import ArrayCalibrationSet, InputSpec, ModelFormat, Precision, TensorSpec
from edgec.targets.litert import (
    LayerReader,
    TFLiteIO,
    convert,
    feeds_to_tflite,
    module_from_tensor_name,
    outputs_from_tflite,
    read_ops,
)
from edgec.targets.registry import resolve_target
from edgec.targets.tflite import runner as runner_mod
from edgec.targets.tflite.target import TFLiteOptions, TFLiteTarget


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return interp


def _run(artifact, samples):
    with TFLiteTarget().open(artifact, threads=1) as runner:
        assert runner.input_specs() == artifact.spec
        outs = [runner.infer(s)["output"] for s in samples]
        return np.concatenate(outs), runner.runtime


@pytest.fixture(scope="module")
def digits(digits_assets, tmp_path_factory, one_torch_thread):
    """The digits CNN (.pt2) as the pipeline loads it, built once at each precision, and its torch logits."""
    loaded = load_checkpoint(digits_assets["checkpoint"])
    calib = load_dataset(digits_assets["calib"], loaded.spec)
    evaluation = load_dataset(
        digits_assets["eval"], loaded.spec, role="evaluation", labels=digits_assets["eval_labels"]
    )
    name = loaded.spec.input_names[0]
    with torch.no_grad():
        ref = np.concatenate([torch_run(loaded.module, s, [name])[0] for s in evaluation.samples])
    target = TFLiteTarget()
    arts = {}
    for p in Precision:
        out = tmp_path_factory.mktemp(f"tflite-{p.value}")
        (arts[p],) = target.build(loaded, p, calib if p == Precision.INT8 else None, out)
    return loaded, calib, evaluation, ref, arts


def test_fp32_matches_torch_with_nhwc_io(digits):
    loaded, _, evaluation, ref, arts = digits
    art = arts[Precision.FP32]
    assert art.format == ModelFormat.TFLITE and art.target == "tflite"
    assert art.path.name == "model.fp32.tflite"
    (x,) = art.metadata["io"]["inputs"]
    assert x["shape"] == [1, 8, 8, 1] and x["layout"] == "NHWC" and x["transpose"] == [0, 2, 3, 1]
    assert art.metadata["layout"] == "NHWC" and art.metadata["batch"] == 1
    assert tuple(_interpreter(art.path).get_input_details()[0]["shape"]) == (1, 8, 8, 1)
    # The artifact keeps the user's NCHW spec: the runner transposes.
    assert art.spec.inputs[0].shape == (1, 1, 8, 8) and art.spec.inputs[0].layout == "NCHW"
    got, runtime = _run(art, evaluation.samples)
    assert runtime.startswith("ai-edge-litert ")
    err = float(np.abs(got - ref).max())
    assert err < 1e-4, err
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(art.metadata["ops"]) == set(read_ops(art.path))


def test_fp16_weights_float_io(digits):
    _, _, evaluation, ref, arts = digits
    art, fp32 = arts[Precision.FP16], arts[Precision.FP32]
    assert art.path.stat().st_size < 0.7 * fp32.path.stat().st_size
    assert "DEQUANTIZE" in art.metadata["ops"]  # fp16 weights dequantized to float32 compute
    io = art.metadata["io"]
    assert all(t["dtype"] == "float32" for t in io["inputs"] + io["outputs"])
    got, _ = _run(art, evaluation.samples)
    assert np.abs(got - ref).max() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_int8_accuracy_on_digits(digits):
    _, calib, evaluation, ref, arts = digits
    art = arts[Precision.INT8]
    got, _ = _run(art, evaluation.samples)
    labels = evaluation.labels
    agreement = (got.argmax(1) == ref.argmax(1)).mean() * 100
    drop = ((ref.argmax(1) == labels).mean() - (got.argmax(1) == labels).mean()) * 100
    assert agreement >= 99.0, agreement
    assert drop <= 0.5, drop
    q = art.metadata["quantization"]
    assert q["observer"] == "histogram" and q["calibration_samples"] == len(calib) == 200
    assert q["weights"] == "int8 symmetric per-channel"


def test_int8_is_full_integer_with_recorded_io_quantization(digits):
    art = digits[4][Precision.INT8]
    # Full integer: no float islands, no QUANTIZE/DEQUANTIZE at the boundaries.
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(art.metadata["ops"])
    interp = _interpreter(art.path)
    details = {d["name"]: d for d in interp.get_input_details() + interp.get_output_details()}
    ios = art.metadata["io"]["inputs"] + art.metadata["io"]["outputs"]
    assert len(ios) == len(details) == 2
    for io in ios:
        d = details[io["tflite_name"]]
        assert io["dtype"] == "int8" and d["dtype"] == np.int8
        scale, zero_point = d["quantization"]
        assert io["scale"] == pytest.approx(scale, rel=1e-7) and io["zero_point"] == zero_point
        assert io["scale"] > 0


def test_int8_residual_adds_are_integer(tmp_path, one_torch_thread):
    """Adds that are not folded into a following conv (MobileNetV2's residuals) are quantized too: litert-torch's
    own add annotator misses them under torch.export(strict=False) and left them float."""

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.expand = torch.nn.Conv2d(8, 16, 1)
            self.project = torch.nn.Conv2d(16, 8, 1)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = self.stem(x)
            y = y + self.project(torch.relu(self.expand(y)))  # MobileNetV2's residual: it feeds a pool, not a conv
            return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    spec = InputSpec((TensorSpec("x", (1, 3, 16, 16), "float32", "NCHW"),), (TensorSpec("y", (1, 4), "float32"),))
    x = np.random.default_rng(0).standard_normal((24, 1, 3, 16, 16)).astype(np.float32)
    model = convert(Residual().eval(), spec, Precision.INT8, tmp_path / "r.tflite",
                    ArrayCalibrationSet([{"x": s} for s in x]))
    assert "ADD" in model.ops and not {"QUANTIZE", "DEQUANTIZE"} & set(model.ops), model.ops
    interp = _interpreter(model.path)
    dtypes = {d["index"]: d["dtype"] for d in interp.get_tensor_details()}
    for op in interp._get_ops_details():
        if op["op_name"] == "ADD":
            assert all(dtypes[i] == np.int8 for i in [*op["inputs"], *op["outputs"]]), op


def test_int8_prelu_and_softmax_are_single_int8_ops(tmp_path, one_torch_thread):
    """The face cascade's RNet (per-channel PReLU, a Softmax head): each PReLU is one int8 PRELU and the Softmax
    an int8 SOFTMAX. litert-torch decomposed PReLU into RELU/MUL/SUB and its quantizer left those and the Softmax
    float between a DEQUANTIZE and a QUANTIZE (5 float islands)."""
    from litert_torch.fx_infra import decomp

    import zoo

    model, data = zoo.trained_cascade_rnet()
    spec = InputSpec((TensorSpec("x", (1, 3, 24, 24), "float32", "NCHW"),),
                     (TensorSpec("box", (1, 4), "float32"), TensorSpec("prob", (1, 10), "float32")))
    calib = ArrayCalibrationSet([{"x": s[None]} for s in data["train_x"][:64]])
    m = convert(model, spec, Precision.INT8, tmp_path / "rnet.tflite", calib)
    assert set(m.ops) == {"CONV_2D", "PRELU", "MAX_POOL_2D", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    interp = _interpreter(m.path)
    dtypes = {d["index"]: d["dtype"] for d in interp.get_tensor_details()}
    for op in interp._get_ops_details():
        if op["op_name"] in ("PRELU", "SOFTMAX"):
            assert all(dtypes[i] == np.int8 for i in [*op["inputs"], *op["outputs"]]), op
    # Only INT8 conversions lower PReLU to one op: litert-torch's decomposition is back for the others.
    assert torch.ops.aten._prelu_kernel.default in decomp.pre_convert_decomp()
    x, labels = data["held_x"], data["held_y"]
    with runner_mod.TFLiteRunner(m.path, spec, m.inputs, m.outputs) as runner:
        got = runner.infer({"x": x})
    with torch.no_grad():
        box, prob = (t.numpy() for t in model(torch.from_numpy(x)))
    for out, ref in ((got["box"], box), (got["prob"], prob)):
        cosine = float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref)))
        assert cosine > 0.999, cosine
    q, f = got["prob"].argmax(1), prob.argmax(1)
    assert (q == f).mean() >= 0.99
    assert ((f == labels).mean() - (q == labels).mean()) * 100 <= 1.0


def test_runner_runs_a_batch_row_by_row(digits):
    _, _, evaluation, _, arts = digits
    art = arts[Precision.INT8]
    samples = evaluation.samples[:4]
    batch = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
    with TFLiteTarget().open(art) as runner:
        together = runner.infer(batch)["output"]
        apart = np.concatenate([runner.infer(s)["output"] for s in samples])
        assert together.shape == (4, 10)
        np.testing.assert_array_equal(together, apart)
        with pytest.raises(Exception, match="takes inputs"):
            runner.infer({"x": np.zeros((1, 1, 7, 7), np.float32)})


def test_io_conversion_quantizes_and_transposes():
    x_io = TFLiteIO("x", "serving_default_args_0", (1, 4, 4, 3), "int8", 0.5, -3, (0, 2, 3, 1), "NHWC")
    assert TFLiteIO.from_dict(json.loads(json.dumps(x_io.to_dict()))) == x_io
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 1, 2, 3] = 1.24  # -> round(2.48) - 3 = -1
    x[0, 2, 0, 0] = 1000.0  # clipped
    x[0, 0, 0, 0] = -1000.0
    (q,) = feeds_to_tflite([x_io], {"x": x})
    assert q.dtype == np.int8 and q.shape == (1, 4, 4, 3)
    assert q[0, 2, 3, 1] == -1 and q[0, 0, 0, 2] == 127 and q[0, 0, 0, 0] == -128 and q[0, 1, 1, 1] == -3
    tok = TFLiteIO("tokens", "t", (1, 5), "int32")
    _, t = feeds_to_tflite([x_io, tok], {"x": x, "tokens": np.arange(5, dtype=np.int64)[None]})
    assert t.dtype == np.int32
    y_io = TFLiteIO("y", "o", (1, 2, 2, 3), "int8", 0.25, 4, (0, 3, 1, 2), "NHWC")
    raw = np.full((1, 2, 2, 3), 8, np.int8)
    y = outputs_from_tflite([y_io], [raw])["y"]
    assert y.dtype == np.float32 and y.shape == (1, 3, 2, 2) and np.all(y == 1.0)


def test_layer_reader_reads_every_op_dequantized_with_its_module(tmp_path, one_torch_thread):
    """Every op output of an INT8 file, as float, named after the module it comes from (litert-torch's tensor
    names hold the module stack when the model is an nn.Module), on the builtin and the reference kernels."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.block = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
            self.head = torch.nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            return self.head(self.block(x).flatten(1))

    spec = InputSpec(
        (TensorSpec("x", (1, 1, 8, 8), "float32", "NCHW"),), (TensorSpec("y", (1, 3), "float32"),)
    )
    x = np.random.default_rng(0).random((16, 1, 1, 8, 8), dtype=np.float32)
    calib = ArrayCalibrationSet([{"x": s} for s in x])
    model = convert(Net().eval(), spec, Precision.INT8, tmp_path / "n.tflite", calib)
    feeds = {"x": np.concatenate(x[:2])}  # two rows: the fixed-batch file runs them one at a time
    layers = LayerReader(model.path, model.inputs)(feeds)
    assert layers[0].op == "" and layers[0].index == -1
    assert layers[0].value.shape == (2, 8, 8, 1)  # the input, NHWC
    ops = [e.op for e in layers[1:]]
    assert ops[0] in ("CONV_2D", "DEPTHWISE_CONV_2D") and ops[-1] == "FULLY_CONNECTED", ops
    assert all(e.value.dtype == np.float32 for e in layers) and len({e.tensor for e in layers}) == len(layers)
    assert layers[1].module == "block.0 (Conv2d) + block.1 (ReLU)"  # fused into one op
    assert layers[-1].module is None  # a model output carries the signature's name instead
    assert layers[1].inputs == (layers[0].tensor,)
    y, step = layers[-1].value, model.outputs[0].scale
    ref = LayerReader(model.path, model.inputs, reference_kernels=True)(feeds)
    assert [e.tensor for e in ref] == [e.tensor for e in layers]
    assert np.max(np.abs(ref[-1].value - y)) <= 2 * step
    with runner_mod.TFLiteRunner(model.path, spec, model.inputs, model.outputs, threads=1) as runner:
        assert np.max(np.abs(runner.infer(feeds)["y"] - y)) <= 2 * step  # XNNPACK, as the device runs it
        assert [e.tensor for e in runner.layer_outputs(feeds)] == [e.tensor for e in layers]


def test_module_from_tensor_name():
    wrap = ("litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/"
            "edgec.targets.litert._wrap.<locals>.Flat_wrapped")
    net = f"{wrap}/__main__.Net_model"
    block = f"{net}/torch.nn.modules.container.Sequential_layer1/__main__.Block_0"
    fused = f"{block};;{net};;{block}/torch.nn.modules.conv.Conv2d_conv_a;1"
    assert module_from_tensor_name(fused) == "layer1.0.conv_a (Conv2d)"  # the deepest of the fused names
    assert module_from_tensor_name(f"{block};") == "layer1.0 (Block)"
    assert module_from_tensor_name(f"{net};1") is None  # the model's own forward
    assert module_from_tensor_name(f"{wrap};;{wrap};1") is None  # an ExportedProgram: the stack is gone
    assert module_from_tensor_name("serving_default_args_0") is None


def test_layer_values_dequantize_per_channel():
    from edgec.targets.litert import _dequantize

    q = np.array([[[[2, -4]]]], np.int8)  # NHWC, two channels on axis 3
    details = {"quantization_parameters": {"scales": np.array([0.5, 0.25]), "zero_points": np.array([0, 0]),
                                           "quantized_dimension": 3}}
    np.testing.assert_array_equal(_dequantize(q, details), np.array([[[[1.0, -1.0]]]], np.float32))
    per_tensor = {"quantization_parameters": {"scales": np.array([0.1]), "zero_points": np.array([-3]),
                                              "quantized_dimension": 0}}
    np.testing.assert_allclose(_dequantize(np.array([7], np.int8), per_tensor), [1.0], rtol=1e-6)
    indices = np.array([1, 2], np.int32)
    assert _dequantize(indices, {"quantization_parameters": {"scales": np.array([])}}) is None


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, one_torch_thread):
    """The two-input model (int64 tokens, float features; two outputs), dynamic batch, at FP32 and INT8."""
    torch.manual_seed(0)
    model = zoo_models.TokensAndFeatures().eval()
    spec = InputSpec(
        (TensorSpec("tokens", ("batch", 16), "int64"), TensorSpec("features", ("batch", 8), "float32")),
        (TensorSpec("output_0", ("batch", 4)), TensorSpec("output_1", ("batch", 32))),
    )
    rng = np.random.default_rng(0)
    calib = ArrayCalibrationSet(
        [{"tokens": rng.integers(0, 50, (2, 16)), "features": rng.standard_normal((2, 8)).astype(np.float32)}
         for _ in range(8)]
    )
    d = tmp_path_factory.mktemp("tokens")
    built = {
        p: convert(model, spec, p, d / f"m.{p.value}.tflite", calib) for p in (Precision.FP32, Precision.INT8)
    }
    return model, spec, calib, built


def test_two_inputs_with_int64_tokens_and_dynamic_batch(token_model):
    model, spec, calib, built = token_model
    fp32, int8 = built[Precision.FP32], built[Precision.INT8]
    assert [i.name for i in fp32.inputs] == ["tokens", "features"]
    assert [o.name for o in fp32.outputs] == ["output_0", "output_1"]
    assert fp32.inputs[0].dtype == "int32"  # litert-torch narrows 64-bit I/O
    assert fp32.info["batch"] == 1 and fp32.info["dynamic_axes_fixed_at_1"] == {
        "tokens": ["batch"], "features": ["batch"]
    }
    assert fp32.inputs[1].layout is None and fp32.inputs[1].transpose is None
    assert int8.inputs[0].dtype == "int32" and int8.inputs[1].dtype == "int8"
    assert int8.info["quantization"]["calibration_samples"] == 8 and int8.info["calibration_rows"] == 16
    feeds = calib.samples[0]  # batch 2: the runner runs it row by row
    ref = torch_run(model, feeds, spec.input_names)
    for result, tol in ((fp32, 1e-4), (int8, 0.1)):
        with runner_mod.TFLiteRunner(result.path, spec, result.inputs, result.outputs, threads=1) as runner:
            got = runner.infer(feeds)
        for r, name in zip(ref, ("output_0", "output_1")):
            assert got[name].shape == r.shape
            assert np.abs(got[name] - r).max() < tol * max(1.0, np.abs(r).max()), (result.precision, name)


def test_int8_lstm_keeps_float_input_and_gets_an_int8_output(tmp_path, one_torch_thread):
    """The LSTM's input stays float (no QUANTIZE follows it); its output, behind a DEQUANTIZE, becomes int8."""
    torch.manual_seed(0)
    model = zoo_models.Recurrent().eval()
    spec = InputSpec((TensorSpec("x", (1, 10, 8)),), (TensorSpec("output", (1, 3)),))
    rng = np.random.default_rng(0)
    calib = ArrayCalibrationSet([{"x": rng.standard_normal((1, 10, 8)).astype(np.float32)} for _ in range(16)])
    m = convert(model, spec, Precision.INT8, tmp_path / "lstm.tflite", calib)
    assert m.info["quantization"]["io_rewritten"] is True
    assert m.inputs[0].dtype == "float32" and m.inputs[0].scale is None
    assert m.outputs[0].dtype == "int8" and m.outputs[0].scale > 0
    with runner_mod.TFLiteRunner(m.path, spec, m.inputs, m.outputs) as runner:
        for sample in calib.samples[:4]:
            ref = torch_run(model, sample, ["x"])[0]
            assert np.abs(runner.infer(sample)["output"] - ref).max() < 2 * m.outputs[0].scale + 1e-3


class Segmenter(torch.nn.Module):
    """A feature-map output: the image model's output follows its input into NHWC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_feature_map_output_layout(tmp_path, channels_last, one_torch_thread):
    torch.manual_seed(0)
    model = Segmenter().eval()
    spec = InputSpec((TensorSpec("x", (1, 3, 6, 6), "float32", "NCHW"),), (TensorSpec("output", (1, 2, 6, 6)),))
    m = convert(model, spec, Precision.FP32, tmp_path / "seg.tflite", channels_last_io=channels_last)
    (x_io,), (y_io,) = m.inputs, m.outputs
    if channels_last:
        assert x_io.shape == (1, 6, 6, 3) and y_io.shape == (1, 6, 6, 2) and y_io.layout == "NHWC"
        assert y_io.transpose == (0, 3, 1, 2)
    else:
        assert x_io.shape == (1, 3, 6, 6) and x_io.transpose is None and x_io.layout == "NCHW"
        assert y_io.shape == (1, 2, 6, 6) and y_io.transpose is None
    x = np.random.default_rng(1).random((1, 3, 6, 6), dtype=np.float32)
    with runner_mod.TFLiteRunner(m.path, spec, m.inputs, m.outputs) as runner:
        got = runner.infer({"x": x})["output"]
    ref = torch_run(model, {"x": x}, ["x"])[0]
    assert got.shape == (1, 2, 6, 6) and np.abs(got - ref).max() < 1e-5


def test_dynamic_axis_other_than_batch_is_refused(tmp_path):
    spec = InputSpec((TensorSpec("tokens", ("batch", "seq"), "int64"), TensorSpec("features", (1, 8))))
    with pytest.raises(ExportError, match="dynamic axis 'seq'") as info:
        convert(zoo_models.TokensAndFeatures(), spec, Precision.FP32, tmp_path / "m.tflite")
    assert "--input tokens:1xN:int64" in info.value.hint and not list(tmp_path.iterdir())


class Scan(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumprod(-1)  # litert-torch has no lowering for aten.cumprod


class WithCumprod(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.scan = Scan()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scan(self.conv(x)).mean(dim=(2, 3))


def test_unlowerable_op_names_the_aten_op_and_module(tmp_path):
    ckpt = tmp_path / "cumprod.pt2"
    torch.export.save(torch.export.export(WithCumprod().eval(), (torch.rand(1, 1, 8, 8),)), str(ckpt))
    loaded = load_checkpoint(ckpt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as info:
        TFLiteTarget().build(loaded, Precision.FP32, None, out)
    msg = str(info.value)
    assert "aten.cumprod" in msg and "scan" in msg and "cumprod.pt2" in msg and "\n" not in msg
    assert info.value.hint


def test_torchscript_converts_through_torchs_converter(tmp_path):
    """A TorchScript-only model goes through torch's TS2EPConverter (checked against TorchScript) to TFLite."""
    ckpt = tmp_path / "m.pt"
    model = zoo_models.tiny_cnn().eval()
    torch.jit.script(model).save(str(ckpt))
    loaded = load_checkpoint(ckpt, (TensorSpec.parse("x:1x1x8x8"),))
    (art,) = TFLiteTarget().build(loaded, Precision.FP32, None, tmp_path)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    with TFLiteTarget().open(art) as runner:
        got = list(runner.infer({"x": x}).values())[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


class _Branchy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_torchscript_with_control_flow_is_refused_naming_the_construct(tmp_path):
    ckpt = tmp_path / "m.pt"
    torch.jit.script(_Branchy()).save(str(ckpt))
    loaded = load_checkpoint(ckpt, (TensorSpec.parse("x:1x4"),))
    # torch's converter turns the data-dependent `if` into torch.cond, which litert-torch cannot lower.
    with pytest.raises(ExportError, match="cannot lower the op cond") as info:
        TFLiteTarget().build(loaded, Precision.FP32, None, tmp_path)
    assert "--target cpu" in info.value.hint


def test_int8_without_calibration_writes_nothing(tiny, tmp_path):
    # The target declares the need (Target.requires); the build's plan checks it once, before loading anything
    # (exit 3, CalibrationError).
    assert TFLiteTarget().requires(Precision.INT8) == ("torch", "calibration")
    assert TFLiteTarget().requires(Precision.FP32) == ("torch",)
    from edgec.cli import cli

    out = tmp_path / "out"
    args = ["build", str(tiny / "tiny.pt2"), "--target", "arm", "-p", "int8", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 3 and "--calib" in r.output and not out.exists()


def test_onnx_checkpoint_is_refused_by_the_cli(tmp_path):
    from edgec.cli import cli

    model = tmp_path / "m.onnx"
    zoo_models.onnx_with_constant_weights(model)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["build", str(model), "--target", "rpi5", "-p", "fp32", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "m.onnx" in r.output and "PyTorch checkpoint" in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # the need of a PyTorch model is the target's declaration, which the plan checks (once)
    assert "torch" in TFLiteTarget().requires(Precision.FP32)


def test_profiles_and_options():
    arm = resolve_target("arm")
    assert arm.name == "cortex-a" and arm.backend == "tflite"
    for name in ("rpi4", "rpi5", "cortex-a"):
        p = resolve_target(name)
        assert p.backend == "tflite" and {x.value for x in p.precisions} == {"fp32", "fp16", "int8"}
    assert resolve_target("rpi5").limits["int8_dot_product"] is True
    from edgec.targets.base import parse_options

    with pytest.raises(ConfigError, match="observer"):
        parse_options(TFLiteOptions, {"observer": "entropy"}, "backend 'tflite'")
    TFLiteTarget.check_available()


def test_interpreter_fallbacks(monkeypatch):
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = object
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    cls, runtime = runner_mod.find_interpreter()
    assert cls is object and runtime.startswith("tflite-runtime")
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(TargetUnavailableError, match="ai-edge-litert"):
        runner_mod.find_interpreter()


def test_cli_build_and_bench_on_rpi5(digits_assets, tmp_path, edgec_cli):
    out = tmp_path / "out"
    r = edgec_cli(
        "build", digits_assets["checkpoint"], "--target", "rpi5", "-p", "fp32", "-p", "int8",
        "--calib", digits_assets["calib"], "--out", out,
    )
    assert r.returncode == 0, r.stderr
    assert "rpi5/model.int8.tflite" in r.stdout
    assert "XNNPACK delegate" not in r.stdout + r.stderr and "Failed to load" not in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["precision"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"fp32", "int8"}
    assert all(a["format"] == "tflite" and a["target"] == "tflite" for a in arts.values())
    assert arts["int8"]["metadata"]["io"]["inputs"][0]["dtype"] == "int8"
    results = tmp_path / "results.json"
    r = edgec_cli(
        "bench", out, "--data", digits_assets["eval"], "--labels", digits_assets["eval_labels"],
        "--iterations", "10", "--warmup", "2", "--json", results, "--max-accuracy-drop", "0.5",
    )
    assert r.returncode == 0, r.stderr
    runs = {run["name"]: run for run in json.loads(results.read_text())["runs"]}
    assert set(runs) == {"rpi5/fp32", "rpi5/int8"}
    assert runs["rpi5/int8"]["runtime"].startswith("ai-edge-litert")
    acc = runs["rpi5/int8"]["accuracy"]["per_output"]["output"]
    assert acc["top1_agreement"] >= 99.0 and acc["accuracy_drop"] <= 0.5
