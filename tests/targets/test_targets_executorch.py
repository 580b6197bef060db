"""The executorch target: real ExecuTorch lowerings (XNNPACK) run in ExecuTorch's Python runtime, on tiny models;
the digits CNN end to end through the `edgec` console script. Tests that need executorch skip without it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zoo_models
from edgec.compiler.errors import ConfigError, ExportError, TargetUnavailableError
from edgec.compiler.modelio import torch_run
from edgec.compiler.stages.load import load_checkpoint
from edgec.compiler.types import ArrayCalibrationSet, InputSpec, ModelFormat, Precision, TensorSpec

needs_executorch = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None,
    reason="the executorch target needs executorch (pip install 'edgec[executorch]')",
)


def _cli(*args):
    from edgec.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------------------------
# Without executorch, and refusals decided before anything is lowered.


def test_unavailable_without_executorch_names_the_extra(monkeypatch):
    from edgec.targets.executorch.target import ExecuTorchTarget
    from edgec.targets.registry import availability

    monkeypatch.setitem(sys.modules, "executorch", None)  # find_spec says "not installed"
    with pytest.raises(TargetUnavailableError) as info:
        ExecuTorchTarget.check_available()
    assert "'executorch'" in info.value.message and "edgec[executorch]" in info.value.hint
    ok, why = availability("executorch")
    assert not ok and "edgec[executorch]" in why
    r = _cli("targets")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "executorch-rpi5" in line]
    assert lines and lines[0].lstrip().startswith("--"), r.output
    assert "unavailable: the executorch target needs the Python package 'executorch'" in r.output


def test_profiles_resolve_and_rpi4_refuses_fp16_saying_why(tiny, tmp_path):
    from edgec.targets.registry import resolve_target

    assert resolve_target("executorch").backend == "executorch"
    assert resolve_target("executorch-cortex-a").name == "executorch"
    assert resolve_target("executorch-pi5").name == "executorch-rpi5"
    assert {p.value for p in resolve_target("executorch-rpi5").precisions} == {"fp32", "fp16", "int8"}
    assert {p.value for p in resolve_target("executorch-rpi4").precisions} == {"fp32", "int8"}
    out = tmp_path / "out"
    r = _cli("build", tiny / "tiny.pt2", "--target", "executorch-rpi4", "-p", "fp16", "--out", out)
    assert r.exit_code == 2, r.output
    assert "does not support fp16" in r.output and "Cortex-A72" in r.output and "fp32, int8" in r.output
    assert not out.exists()


def test_dynamic_axis_other_than_batch_is_refused_naming_it(tmp_path):
    from edgec.targets.executorch.lower import lower

    spec = InputSpec((TensorSpec("tokens", ("batch", "seq"), "int64"), TensorSpec("features", (1, 8))))
    with pytest.raises(ExportError, match="input 'tokens'.*dynamic axis 'seq' \\(axis 1\\)") as info:
        lower(zoo_models.TokensAndFeatures(), spec, Precision.FP32, tmp_path / "m.pte")
    assert "--input tokens:1xN:int64" in info.value.hint and not list(tmp_path.iterdir())


def test_options_are_validated():
    from edgec.targets.base import parse_options
    from edgec.targets.executorch.target import ExecuTorchOptions

    with pytest.raises(ConfigError, match="observer"):
        parse_options(ExecuTorchOptions, {"observer": "entropy"}, "backend 'executorch'")
    assert parse_options(ExecuTorchOptions, {"bundle_samples": 0}, "x").bundle_samples == 0
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(ExecuTorchOptions))


# ---------------------------------------------------------------------------------------------------------------
# Real lowerings.


@pytest.fixture(scope="module")
def tiny_build(tiny, tmp_path_factory):
    """The tiny CNN built for executorch-rpi5 at FP32, FP16 and INT8 through edgec.api.build; evaluation data."""
    if importlib.util.find_spec("executorch") is None:
        pytest.skip("the executorch target needs executorch (pip install 'edgec[executorch]')")
    from edgec import api
    from edgec.recipe import Recipe

    work = tmp_path_factory.mktemp("et-build")
    result = api.build(Recipe(
        checkpoint=str(tiny / "tiny.pt2"), target=["executorch-rpi5"], precision=["fp32", "fp16", "int8"],
        calib=str(tiny / "calib.npz"), out=str(work / "out"),
    ))
    x = np.random.default_rng(3).random((12, 1, 8, 8), dtype=np.float32)
    np.savez(work / "eval.npz", x=x)
    model = zoo_models.tiny_cnn().eval()
    return result, work / "eval.npz", x, model


@needs_executorch
def test_pte_files_run_in_executorch_and_agree_with_torch(tiny_build):
    from edgec.benchmarks.harness import run_outputs

    result, _, x, model = tiny_build
    arts = {a.precision: a for a in result.artifacts}
    assert set(arts) == set(Precision)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    feeds = [{"x": x[i:i + 1]} for i in range(len(x))]
    tolerance = {Precision.FP32: 1e-4, Precision.FP16: 2e-2, Precision.INT8: 0.1}
    for p, art in arts.items():
        assert art.format == ModelFormat.PTE and art.target == "executorch"
        assert art.path.name == f"model.{p.value}.pte" and art.path.parent.name == "executorch-rpi5"
        assert art.metadata["io"] == {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                                      "outputs": [{"name": "output", "shape": [1, 10], "dtype": "float32"}]}
        assert art.metadata["delegation"]["delegate_calls"] >= 1
        outs, runtime = run_outputs(art, feeds)
        assert runtime.startswith("executorch 1.5.1")
        got = np.concatenate([o["output"] for o in outs])
        err = float(np.abs(got - ref).max())
        assert err <= tolerance[p], (p, err)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= (1.0 if p == Precision.FP32 else 0.9)
    q = arts[Precision.INT8].metadata["quantization"]
    assert q["weights"] == "int8 symmetric per-channel" and q["calibration_samples"] == 8
    assert "XNNPACKQuantizer" in q["method"]


@needs_executorch
def test_bundled_program_checks_itself_in_the_runtime(tiny_build):
    from executorch.extension.pybindings import portable_lib

    result, *_ = tiny_build
    for art in result.artifacts:
        bundle = art.metadata["bundle"]
        path = art.path.with_name(bundle["file"])
        assert path.is_file() and bundle["file"] == f"model.{art.precision.value}.bpte"
        assert bundle["test_cases"] == 4 and art.metadata["companions"] == [bundle["file"]]
        program = portable_lib._load_bundled_program_from_buffer(path.read_bytes())
        for i in range(bundle["test_cases"]):
            program.verify_result_with_bundled_expected_output("forward", i, 1e-5, 1e-6)
        with pytest.raises(RuntimeError):
            program.verify_result_with_bundled_expected_output("forward", bundle["test_cases"], 1e-5, 1e-6)


@needs_executorch
def test_bench_and_compare_run_the_pte_artifacts(tiny_build, tmp_path):
    result, data, _, _ = tiny_build
    out = tmp_path / "r.json"
    r = _cli("bench", result.out, "--data", data, "--iterations", 5, "--warmup", 1, "--json", out)
    assert r.exit_code == 0, r.output
    runs = {run["name"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"executorch-rpi5/fp32", "executorch-rpi5/fp16", "executorch-rpi5/int8"}
    assert all(run["format"] == "pte" and run["runtime"].startswith("executorch") for run in runs.values())
    assert runs["executorch-rpi5/int8"]["accuracy"]["per_output"]["output"]["cosine"] > 0.99
    r = _cli("compare", result.out, "--data", data)
    assert r.exit_code == 0, r.output
    assert "executorch-rpi5/int8" in r.output and "executorch 1.5.1 (XNNPACK)" in r.output
    assert "no layer report (the runner of executorch-rpi5/int8" in r.output
    assert "cannot read its intermediate tensors" in r.output


@needs_executorch
def test_device_runner_runs_pte_and_gives_the_host_outputs(tiny_build, tmp_path):
    """`python -m edgec.benchmarks.device` (what `edgec bench --remote` ships) runs .pte files on ExecuTorch's
    runtime; ExecuTorch's Python bindings bring torch along, which the JSON records."""
    from edgec.benchmarks.harness import run_outputs

    result, data, x, _ = tiny_build
    done = subprocess.run(
        [sys.executable, "-m", "edgec.benchmarks.device", str(result.out), "--data", str(data), "--iterations", "3",
         "--json", str(tmp_path / "r.json"), "--outputs", str(tmp_path / "o.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in doc["runs"]] == [a.name for a in result.artifacts] and not doc["skipped"]
    assert all(r["runtime"] == "executorch 1.5.1 (XNNPACK)" for r in doc["runs"]) and doc["imported"]["torch"]
    with np.load(tmp_path / "o.npz") as f:
        outputs = {k: f[k] for k in f.files}
    feeds = [{"x": x[i:i + 1]} for i in range(len(x))]
    for i, art in enumerate(result.artifacts):
        host, _ = run_outputs(art, feeds)
        for j, h in enumerate(host):
            np.testing.assert_array_equal(outputs[f"a{i}.s{j}.o0"], h["output"])


@needs_executorch
def test_dynamic_batch_is_fixed_at_1_and_run_row_by_row(tmp_path):
    from edgec.targets.executorch.lower import lower
    from edgec.targets.executorch.runner import ExecuTorchRunner

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    spec = InputSpec((TensorSpec("x", ("N", 16)),), (TensorSpec("y", ("N", 3)),))
    calib = ArrayCalibrationSet([{"x": np.random.default_rng(i).standard_normal((4, 16)).astype(np.float32)}
                                 for i in range(4)])
    m = lower(model, spec, Precision.INT8, tmp_path / "m.pte", calib, bundle_samples=0)
    assert m.info["dynamic_axes_fixed_at_1"] == {"x": ["N"]} and m.info["quantization"]["calibration_calls"] == 16
    assert m.inputs[0].shape == (1, 16) and m.bundle is None and not (tmp_path / "m.bpte").exists()
    batch = calib.samples[0]
    with ExecuTorchRunner(m.path, spec, m.inputs, m.outputs, threads=1) as runner:
        got = runner.infer(batch)["y"]
        with pytest.raises(Exception, match="takes inputs x:1x16"):
            runner.infer({"x": np.zeros((1, 15), np.float32)})
    ref = torch_run(model, batch, ["x"])[0]
    assert got.shape == (4, 3) and np.abs(got - ref).max() < 0.1


class Scan(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumprod(-1)  # not in the core ATen opset: to_edge refuses it


class WithCumprod(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.scan = Scan()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scan(self.conv(x)).mean(dim=(2, 3))


@needs_executorch
def test_unlowerable_op_names_the_aten_op_and_module(tmp_path):
    from edgec.targets.executorch.target import ExecuTorchTarget

    ckpt = tmp_path / "cumprod.pt2"
    torch.export.save(torch.export.export(WithCumprod().eval(), (torch.rand(1, 1, 8, 8),)), str(ckpt))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as info:
        ExecuTorchTarget().build(load_checkpoint(ckpt), Precision.FP32, None, out)
    msg = str(info.value)
    assert "aten.cumprod.default" in msg and "scan" in msg and "cumprod.pt2" in msg and "\n" not in msg
    assert "without cumprod" in info.value.hint and not list(out.iterdir())


class PReLUHead(torch.nn.Module):
    """MTCNN's head: a PReLU after a Linear (2-D), which XNNPACK's channels-last pass cannot take as PReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.act = torch.nn.PReLU(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 8)
        self.prelu = torch.nn.PReLU(8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x)).permute(0, 3, 2, 1).flatten(1)
        return self.head(self.prelu(self.fc(y))).softmax(-1)


@needs_executorch
def test_prelu_after_linear_is_rewritten_and_lowered(tmp_path):
    from edgec.targets.executorch.lower import lower
    from edgec.targets.executorch.runner import ExecuTorchRunner

    model = PReLUHead().eval()
    with torch.no_grad():
        model.prelu.weight.uniform_(-0.5, 0.5)  # negative slopes the rewrite must keep
    spec = InputSpec((TensorSpec("x", (1, 3, 8, 8), "float32", "NCHW"),), (TensorSpec("p", (1, 2)),))
    m = lower(model, spec, Precision.FP32, tmp_path / "m.pte", bundle_samples=1)
    assert m.info["rewrites"] == ["prelu on a 2-D tensor at prelu as clamp/mul/add (XNNPACK's PReLU is 4-D only)"]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with ExecuTorchRunner(m.path, spec, m.inputs, m.outputs) as runner:
        got = runner.infer({"x": x})["p"]
    assert np.abs(got - torch_run(model, {"x": x}, ["x"])[0]).max() < 1e-5


class MaskedAttention(torch.nn.Module):
    """An additive -1e9 mask made with ``mask.to(x.dtype)``: traced as float32, out of float16's range."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(20, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        bias = (1.0 - mask.to(x.dtype))[:, None, :] * -1e9
        scores = self.proj(x) @ x.transpose(1, 2) + bias
        return (scores.softmax(-1) @ x).mean(1)


@needs_executorch
def test_fp16_of_an_exported_model_with_float32_casts_and_a_mask(tmp_path):
    from edgec.targets.executorch.lower import lower
    from edgec.targets.executorch.runner import ExecuTorchRunner

    args = (torch.ones(1, 6, dtype=torch.int64), torch.ones(1, 6, dtype=torch.int64))
    ckpt = tmp_path / "attn.pt2"
    torch.export.save(torch.export.export(MaskedAttention().eval(), args), str(ckpt))
    loaded = load_checkpoint(ckpt)
    m = lower(loaded.module, loaded.spec, Precision.FP16, tmp_path / "m.pte", bundle_samples=0)
    assert any("float16" in r for r in m.info["rewrites"]) and any("65504" in r for r in m.info["rewrites"])
    feeds = {loaded.spec.inputs[0].name: np.array([[3, 4, 5, 6, 0, 0]]),
             loaded.spec.inputs[1].name: np.array([[1, 1, 1, 1, 0, 0]])}
    with ExecuTorchRunner(m.path, loaded.spec, m.inputs, m.outputs) as runner:
        got = list(runner.infer(feeds).values())[0]
    ref = torch_run(loaded.module, feeds, loaded.spec.input_names)[0]
    assert np.all(np.isfinite(got)) and np.abs(got - ref).max() < 1e-2


@needs_executorch
def test_torchscript_and_int8_without_calibration(tmp_path, tiny):
    from edgec.targets.executorch.target import ExecuTorchTarget

    ckpt = tmp_path / "m.pt"
    model = zoo_models.tiny_cnn().eval()
    torch.jit.script(model).save(str(ckpt))
    loaded = load_checkpoint(ckpt, (TensorSpec.parse("x:1x1x8x8"),))
    (art,) = ExecuTorchTarget().build(loaded, Precision.FP32, None, tmp_path)
    assert art.metadata["check"]["samples"] == 4  # random inputs without --calib
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    with ExecuTorchTarget().open(art) as runner:
        got = runner.infer({"x": x})["output"]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    # INT8 declares its need of calibration data, which the build's plan checks (once) before anything runs.
    assert ExecuTorchTarget().requires(Precision.INT8) == ("torch", "calibration")


@needs_executorch
@pytest.mark.slow
def test_cli_build_and_bench_on_the_digits_cnn(digits_assets, tmp_path, edgec_cli):
    """The demo's trained CNN through the console script: FP32 .pte within 1e-4 of torch, INT8 within the
    accuracy budget the other targets meet (drop <= 0.5 points)."""
    out = tmp_path / "out"
    r = edgec_cli(
        "build", digits_assets["checkpoint"], "--target", "executorch-rpi5", "-p", "fp32", "-p", "int8",
        "--calib", digits_assets["calib"], "--out", out,
    )
    assert r.returncode == 0, r.stderr
    assert "executorch-rpi5/model.int8.pte" in r.stdout
    assert "cpuinfo" not in r.stdout + r.stderr and "Warning" not in r.stderr
    assert sorted(p.name for p in (out / "executorch-rpi5").iterdir()) == [
        "model.fp32.bpte", "model.fp32.pte", "model.int8.bpte", "model.int8.pte"]
    results = tmp_path / "results.json"
    r = edgec_cli(
        "bench", out, "--data", digits_assets["eval"], "--labels", digits_assets["eval_labels"],
        "--reference", digits_assets["checkpoint"], "--iterations", "10", "--warmup", "2", "--json", results,
        "--max-accuracy-drop", "0.5",
    )
    assert r.returncode == 0, r.stderr
    runs = {run["name"]: run for run in json.loads(results.read_text())["runs"]}
    fp32 = runs["executorch-rpi5/fp32"]["accuracy"]["per_output"]["output"]
    int8 = runs["executorch-rpi5/int8"]["accuracy"]["per_output"]["output"]
    assert fp32["max_abs_error"] <= 1e-4 and fp32["top1_agreement"] == 100.0
    assert int8["top1_agreement"] >= 99.0 and int8["accuracy_drop"] <= 0.5


@needs_executorch
def test_a_missing_runtime_kernel_is_named(tmp_path):
    """A program holding an op the runtime has no kernel for (forced past to_edge's core-ATen check) fails to
    load naming the kernel, which the runtime logs rather than raises."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from edgec.compiler.errors import InputFileError
    from edgec.targets.executorch.lower import PteIO
    from edgec.targets.executorch.runner import ExecuTorchRunner

    exported = torch.export.export(Scan(), (torch.rand(1, 4),))
    config = EdgeCompileConfig(_core_aten_ops_exception_list=[torch.ops.aten.cumprod.default])
    path = tmp_path / "m.pte"
    with warnings.catch_warnings():  # torch's pytree deprecations, inside ExecuTorch
        warnings.simplefilter("ignore", FutureWarning)
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], compile_config=config)
        path.write_bytes(lowered.to_executorch().buffer)
    spec = InputSpec((TensorSpec("x", (1, 4)),))
    io = [PteIO("x", (1, 4), "float32")]
    with pytest.raises(InputFileError, match="no kernel for aten::cumprod.out") as info:
        with ExecuTorchRunner(path, spec, io, [PteIO("output", (1, 4), "float32")]):
            pass
    assert "rebuild" in info.value.hint
