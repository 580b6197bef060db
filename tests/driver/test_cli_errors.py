"""Every user mistake: a one-line error and hint, a documented exit code, no traceback, no output folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zoo_models
from edgec.cli import cli


def _run(args, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*map(str, args), "--out", str(out)] if args[0] == "build" else list(map(str, args)))
    return result, out


def _assert_user_error(result, out, code, *needles):
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: " in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_missing_checkpoint(tmp_path):
    result, out = _run(["build", tmp_path / "nope.pt2"], tmp_path)
    _assert_user_error(result, out, 3, "nope.pt2", "does not exist")


def test_corrupt_checkpoint(tmp_path, tiny):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes((tiny / "tiny.pt2").read_bytes()[:500])
    result, out = _run(["build", bad], tmp_path)
    _assert_user_error(result, out, 3, "bad.pt2", "hint:")


def test_onnx_failing_the_checker(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["nothing"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph), str(path))
    result, out = _run(["build", path], tmp_path)
    _assert_user_error(result, out, 3, "broken.onnx", "ONNX checker")


def test_input_shape_the_model_rejects(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(zoo_models.tiny_cnn().eval()).save(str(path))
    result, out = _run(["build", path, "--input", "x:1x3x8x8"], tmp_path)
    _assert_user_error(result, out, 3, "rejected inputs x:1x3x8x8", "--input")


@pytest.mark.parametrize(
    "data, needle",
    [
        (np.zeros((4, 1, 7, 7), np.float32), "shape"),
        (np.zeros((4, 1, 8, 8), np.int64), "int64"),
        (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN"),
        (np.full((4, 1, 8, 8), np.inf, np.float32), "Inf"),
        (np.zeros((0, 1, 8, 8), np.float32), "no samples"),
    ],
    ids=["shape", "dtype", "nan", "inf", "empty"],
)
def test_bad_calibration_data(tmp_path, tiny, data, needle):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=data)
    result, out = _run(["build", tiny / "tiny.pt2", "-p", "int8", "--calib", calib], tmp_path)
    _assert_user_error(result, out, 3, "calib.npz")
    assert needle.lower() in result.output.lower()


def test_fewer_calibration_samples_than_asked(tmp_path, tiny):
    result, out = _run(["build", tiny / "tiny.pt2", "-p", "int8", "--calib", tiny / "calib.npz", "--calib-samples", "100"], tmp_path)
    _assert_user_error(result, out, 3, "--calib-samples", "8")


def test_int8_without_calibration(tmp_path, tiny):
    result, out = _run(["build", tiny / "tiny.pt2", "-p", "int8"], tmp_path)
    _assert_user_error(result, out, 3, "INT8 needs calibration data", "--calib")


@pytest.mark.parametrize("target, says", [("rpi5", "converts PyTorch models (litert-torch)"),
                                           ("mcu", "converts PyTorch models (litert-torch)"),
                                           ("executorch", "lowers PyTorch models")])
def test_onnx_checkpoint_for_a_torch_target(tmp_path, tiny, target, says):
    # Declared once by the target (Target.requires) and checked once, when the build is planned.
    onnx_file = tmp_path / "tiny.onnx"
    model = zoo_models.tiny_cnn().eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(onnx_file), dynamo=False)
    result, out = _run(["build", onnx_file, "--target", target, "-p", "int8", "--calib", tiny / "calib.npz"], tmp_path)
    if result.exit_code == 5:
        pytest.skip(f"the {target} target's runtime is not installed")
    _assert_user_error(result, out, 2, f"target '{target}' {says}", "is an ONNX file", "pass the PyTorch checkpoint")


def test_unknown_target(tmp_path, tiny):
    result, out = _run(["build", tiny / "tiny.pt2", "--target", "toaster"], tmp_path)
    _assert_user_error(result, out, 2, "unknown target 'toaster'", "cpu")


def test_unknown_precision(tmp_path, tiny):
    result, out = _run(["build", tiny / "tiny.pt2", "-p", "int4"], tmp_path)
    _assert_user_error(result, out, 2, "unknown precision 'int4'", "fp32, fp16, int8")


def test_unknown_recipe_key(tmp_path, tiny):
    recipe = tmp_path / "edgec.yaml"
    recipe.write_text("precision: [fp32]\ncalib_sample: 10\n")
    result, out = _run(["build", tiny / "tiny.pt2", "--config", recipe], tmp_path)
    _assert_user_error(result, out, 2, "unknown key 'calib_sample'", "calib_samples")


def test_unknown_target_option_in_recipe(tmp_path, tiny):
    recipe = tmp_path / "edgec.yaml"
    recipe.write_text("target_options:\n  onnxruntime:\n    perchannel: false\n")
    result, out = _run(["build", tiny / "tiny.pt2", "--config", recipe], tmp_path)
    _assert_user_error(result, out, 2, "unknown option 'perchannel'", "per_channel")


def test_out_is_a_foreign_folder(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(cli, ["build", str(tiny / "tiny.pt2"), "--out", str(out)])
    assert result.exit_code == 2 and "not an edgec build" in result.output
    assert (out / "thesis.tex").read_text() == "precious"


def test_missing_runtime(tmp_path, tiny, edgec_cli):
    """A broken or absent onnxruntime makes the cpu target unavailable (exit 5), with the install hint."""
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    out = tmp_path / "out"
    r = edgec_cli("build", tiny / "tiny.pt2", "--out", out, env={"PYTHONPATH": str(shadow.parent)})
    assert r.returncode == 5, r.stderr
    assert "error: the onnxruntime target needs the Python package 'onnxruntime'" in r.stderr
    assert "hint: pip install" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    listed = edgec_cli("targets", env={"PYTHONPATH": str(shadow.parent)})
    assert listed.returncode == 0 and "unavailable" in listed.stdout


def test_bench_without_a_build(tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--data", "x.npz"])
    _assert_user_error(result, None, 3, "manifest.json")


def test_corrupt_checkpoint_prints_only_edgec_lines(tmp_path, tiny, edgec_cli):
    """torch logs its own traceback of a corrupt archive before raising; the user sees edgec's lines only."""
    bad = tmp_path / "bad.pt2"
    bad.write_bytes((tiny / "tiny.pt2").read_bytes()[:3000])
    done = edgec_cli("-q", "build", bad, "--target", "cpu", "--out", tmp_path / "out")
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert [line.split(":")[0] for line in done.stderr.strip().splitlines()] == ["error", "hint"], done.stderr


def test_a_failing_stage_is_one_error_line(tmp_path, monkeypatch):
    """An exception from inside a stage (a third-party tool's, or a bug) ends in an error line and exit 4,
    naming the stage; EDGEC_DEBUG=1 adds the traceback."""
    import edgec.targets.onnxruntime.target as ort_target

    def broken(*args, **kwargs):
        raise RuntimeError("the runtime refused the file")

    monkeypatch.setattr(ort_target, "fusion_report", broken)
    path = tmp_path / "m.onnx"
    zoo_models.onnx_with_constant_weights(path)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    args = ["build", path, "--target", "cpu", "-p", "int8", "--calib", tmp_path / "c.npz"]
    result, out = _run(args, tmp_path)
    _assert_user_error(result, out, 4, "stage 'cpu/int8' failed", "RuntimeError: the runtime refused the file",
                       "EDGEC_DEBUG=1")
    monkeypatch.setenv("EDGEC_DEBUG", "1")
    result = CliRunner().invoke(cli, [*map(str, args), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 4 and "Traceback" in result.output


def test_an_onnx_file_quantized_already_is_not_quantized_again(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 8], np.random.default_rng(0).standard_normal(128).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    float_path, path = tmp_path / "float.onnx", tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(float_path))
    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((16, 1, 16)).astype(np.float32))
    result, out = _run(["build", path, "--target", "cpu", "-p", "int8", "--calib", tmp_path / "calib.npz"],
                       tmp_path)
    _assert_user_error(result, out, 3, "'dyn.onnx' is quantized already", "MatMulInteger", "hint: build -p fp32")
    result, out = _run(["build", path, "--target", "cpu", "-p", "fp32"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning: 'dyn.onnx' is quantized already" in result.output and (out / "cpu" / "model.fp32.onnx").exists()


def test_int8_that_would_run_no_int8_kernel_fails_saying_why(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bias = helper.make_tensor("b", TensorProto.FLOAT, [1, 8], [0.5] * 8)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [bias])
    path = tmp_path / "elementwise.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 1, 8)).astype(np.float32))
    result, out = _run(["build", path, "--target", "cpu", "-p", "fp32", "-p", "int8", "--calib",
                        tmp_path / "calib.npz"], tmp_path)
    _assert_user_error(result, out, 4, "runs no int8 kernel", "no Conv, MatMul or Gemm", "hint: build -p fp32")
