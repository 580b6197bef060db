"""The device half against fakes (``fake_tensorrt``): tensorrt modules shaped like 10.x and 11.x, and
cuda-python's runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext
from edgec.compiler.errors import ConfigError, InputFileError, TargetBuildError, TargetUnavailableError
from edgec.compiler.stages.calibrate import CalibrateStage
from edgec.compiler.stages.load import onnx_spec
from edgec.compiler.types import ArrayCalibrationSet, OnnxModel, Precision
from edgec.targets.tensorrt import cudart
from edgec.targets.tensorrt.bundle import write_bundle
from edgec.targets.tensorrt.engine import build_engine, build_engines, jetson_versions
from edgec.targets.tensorrt.runner import HostEstimateRunner, TensorRTRunner
from edgec.targets.tensorrt.target import TensorRTOptions, TensorRTTarget
from fake_tensorrt import make_cudart, make_tensorrt

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def device(monkeypatch):
    """Installs a fake CUDA device and a fake TensorRT: device(trt_version, **kw) -> (trt, rt)."""

    def install(trt_version: str = "10.3.0.30", *, devices: int = 1, name: bytes = b"Orin", cc=(8, 7), dla_cores=0):
        rt = make_cudart(devices, name, cc)
        trt = make_tensorrt(trt_version, dla_cores=dla_cores, memory=rt.memory)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt, rt

    return install


def _tiny_model(path: Path, unsupported: bool = False) -> OnnxModel:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch N."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32) * 0.3, "fw"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return OnnxModel(path, onnx_spec(model), {})


def make_bundle(folder: Path, device_name: str = "gpu", precisions=("fp32", "fp16", "int8"), **options) -> Path:
    """A real bundle (host half) for ``device_name``, without torch: the tiny ONNX model, calibrated for int8."""
    folder.mkdir(parents=True, exist_ok=True)
    model = _tiny_model(folder / "source.onnx")
    rng = np.random.default_rng(1)
    calib = ArrayCalibrationSet([{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(10)])
    target = TensorRTTarget(TensorRTOptions(device=device_name, rtx_lint=False, **options))
    arts = []
    for p in precisions:
        precision = Precision(p)
        data = calib if precision == Precision.FP16 else None
        if precision == Precision.INT8:
            ctx = BuildContext(work_dir=folder, cache=BuildCache(enabled=False))
            data = CalibrateStage("minmax").run({"onnx": model, "calibration": calib}, folder, ctx)
        arts += target.build(model, precision, data, folder)
    for a in arts:
        a.metadata["profile"] = target.facts.name
    write_bundle(folder, arts)
    return folder


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("gpu-bundle"), "gpu")


@pytest.fixture(scope="module")
def nano_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("nano-bundle"), "jetson-orin-nano", precisions=("fp32", "fp16"))


@pytest.fixture(scope="module")
def orin_dla_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("agx-bundle"), "jetson-agx-orin", dla_core=0, max_batch=1)


def _fresh(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


# ----------------------------------------------------------------------------------------- engine builds


def test_trt10_builds_strongly_typed_with_profile_and_timing_cache(device, gpu_bundle, tmp_path):
    trt, _ = device("10.3.0.30", name=b"NVIDIA RTX A2000", cc=(8, 6))
    folder = _fresh(gpu_bundle, tmp_path)
    result = build_engine(folder, "fp16")
    (network,), (config,) = trt.log.networks, trt.log.configs
    assert network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert config.flags == set()  # strongly typed: no precision flags at all
    assert config.profiles[0].shapes == {"x": ((1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8))}
    assert (folder / "timing.cache").read_bytes() == b"timing-cache:10.3.0.30"
    assert result.engine == folder / "model.fp16.engine" and result.engine.is_file()
    side = json.loads((folder / "model.fp16.engine.json").read_text())
    assert side["tensorrt"] == "10.3.0.30" and side["gpu_name"] == "NVIDIA RTX A2000"
    assert side["compute_capability"] == "8.6" and side["cuda_runtime"] == "12.6" and side["cuda_driver"] == "12.6"
    assert side["jetpack"] is None and side["l4t"] is None  # not a Jetson
    assert side["strongly_typed"] is True and side["dla_core"] is None and side["precision"] == "fp16"
    assert side["optimization_profile"] == {"x": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [8, 1, 8, 8]}}


def test_trt11_never_touches_the_removed_flags(device, gpu_bundle, tmp_path):
    trt, _ = device("11.4.1.3", name=b"NVIDIA H100", cc=(9, 0))
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    folder = _fresh(gpu_bundle, tmp_path)
    results = build_engines(folder, version_compatible=True)
    assert [r.precision for r in results] == ["fp32", "fp16", "int8"]
    assert all(n.flags == 0 for n in trt.log.networks)  # strongly typed is the only mode in 11
    assert all(c.flags == {"VERSION_COMPATIBLE"} for c in trt.log.configs)
    assert json.loads((folder / "model.int8.engine.json").read_text())["version_compatible"] is True


def test_timing_cache_from_another_version_is_replaced(device, gpu_bundle, tmp_path):
    device("10.3.0.30")
    folder = _fresh(gpu_bundle, tmp_path)
    (folder / "timing.cache").write_bytes(b"timing-cache:10.16.1")
    said = []
    build_engine(folder, "fp32", report=said.append)
    assert any("another device or TensorRT version" in s for s in said)
    assert (folder / "timing.cache").read_bytes() == b"timing-cache:10.3.0.30"


def test_trt10_dla_is_weakly_typed_with_gpu_fallback(device, orin_dla_bundle, tmp_path):
    trt, _ = device("10.3.0.30", dla_cores=2)
    folder = _fresh(orin_dla_bundle, tmp_path)
    build_engine(folder, "int8")  # the bundle's DLA choice (core 0) applies
    (network,), (config,), (parser,) = trt.log.networks, trt.log.configs, trt.log.parsers
    assert network.flags == 0
    assert config.flags == {"GPU_FALLBACK", "FP16", "INT8"}
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 0
    assert parser.flags == set()  # ADJUST_FOR_DLA arrived in 10.16
    side = json.loads((folder / "model.int8.engine.json").read_text())
    assert side["dla_core"] == 0 and side["gpu_fallback"] is True and side["strongly_typed"] is False


def test_trt11_dla_is_strongly_typed(device, orin_dla_bundle, tmp_path):
    trt, _ = device("11.4.1.3", dla_cores=2)
    folder = _fresh(orin_dla_bundle, tmp_path)
    build_engine(folder, "fp16", dla_core=1)
    (network,), (config,), (parser,) = trt.log.networks, trt.log.configs, trt.log.parsers
    assert network.flags == 0 and config.flags == {"GPU_FALLBACK"} and config.DLA_core == 1
    assert parser.flags == {"ADJUST_FOR_DLA"}


def test_dla_refused_where_tensorrt_or_the_bundle_cannot_use_it(device, orin_dla_bundle, nano_bundle, tmp_path):
    trt, _ = device("11.3.0.1", dla_cores=2)
    with pytest.raises(ConfigError, match="returned in 11.4.1") as info:
        build_engine(_fresh(orin_dla_bundle, tmp_path / "a"), "fp16")
    assert "--no-dla" in info.value.hint
    side = build_engine(_fresh(orin_dla_bundle, tmp_path / "gpu"), "fp16", use_bundle_dla=False).info
    assert side["dla_core"] is None and trt.log.configs[-1].default_device_type == trt.DeviceType.GPU
    with pytest.raises(ConfigError, match="FP16 and INT8 only"):
        build_engine(_fresh(orin_dla_bundle, tmp_path / "b"), "fp32", dla_core=0)
    with pytest.raises(ConfigError, match="'jetson-orin-nano', which has no DLA"):
        build_engine(_fresh(nano_bundle, tmp_path / "c"), "fp16", dla_core=0)


def test_dla_core_beyond_what_tensorrt_reports(device, orin_dla_bundle, tmp_path):
    device("10.3.0.30", dla_cores=1)
    with pytest.raises(ConfigError, match="DLA core 1: this device's TensorRT reports 1 DLA core"):
        build_engine(_fresh(orin_dla_bundle, tmp_path), "fp16", dla_core=1)


def test_no_cuda_device_is_a_clear_error_before_any_tensorrt_object(device, gpu_bundle, tmp_path):
    trt, rt = device("10.3.0.30", devices=0)
    with pytest.raises(TargetUnavailableError) as info:
        build_engine(_fresh(gpu_bundle, tmp_path), "fp16")
    assert "needs a CUDA device" in info.value.message and "cudaErrorInsufficientDriver (35)" in info.value.message
    assert trt.log.builders == 0 and trt.log.runtimes == 0
    assert rt.calls == ["cudaGetDeviceCount"]


def test_missing_cuda_python_or_tensorrt(monkeypatch, device, gpu_bundle, tmp_path):
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(TargetUnavailableError, match="needs cuda-python"):
        build_engine(_fresh(gpu_bundle, tmp_path / "a"), "fp16")
    assert cudart.device_count()[0] == 0
    device("10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TargetUnavailableError, match="'tensorrt' Python module") as info:
        build_engine(_fresh(gpu_bundle, tmp_path / "b"), "fp16")
    assert "--system-site-packages" in info.value.hint


def test_bundle_for_another_tensorrt_major(device, nano_bundle, tmp_path):
    device("11.4.1.3")
    with pytest.raises(InputFileError, match="targets TensorRT 10.x, and this device has TensorRT 11.4.1.3") as info:
        build_engine(_fresh(nano_bundle, tmp_path), "fp16")
    assert "trt_major" in info.value.hint


def test_bundle_for_another_gpu(device, nano_bundle, tmp_path):
    device("10.3.0.30", name=b"NVIDIA H100", cc=(9, 0))
    with pytest.raises(InputFileError, match=r"made for jetson-orin-nano \(sm 8.7\).*NVIDIA H100 \(sm 9.0\)") as info:
        build_engine(_fresh(nano_bundle, tmp_path), "fp16")
    assert "--target gpu" in info.value.hint


def test_parser_errors_are_reported_per_node(device, gpu_bundle, tmp_path):
    device("10.3.0.30")
    folder = _fresh(gpu_bundle, tmp_path)
    model = onnx.load(str(folder / "model.fp32.onnx"))
    next(n for n in model.graph.node if n.name == "relu").op_type = "Unique"  # what this TensorRT rejects
    onnx.save(model, str(folder / "model.fp32.onnx"))
    with pytest.raises(TargetBuildError, match=r"cannot parse 'model.fp32.onnx': node 'relu' \(Unique\)"):
        build_engine(folder, "fp32")


def test_precision_missing_from_the_bundle(device, nano_bundle, tmp_path):
    device("10.3.0.30")
    with pytest.raises(ConfigError, match="has no int8 model"):
        build_engine(_fresh(nano_bundle, tmp_path), "int8")


def test_bundle_derived_from_the_build_manifest(device, gpu_bundle, tmp_path):
    """A build folder written before the driver wrote bundle.json still builds: the manifest has it all."""
    from edgec.compiler.types import Artifact, ModelFormat, sha256_file

    device("10.3.0.30")
    out = tmp_path / "out"
    folder = _fresh(gpu_bundle, out)
    bundle = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").unlink()
    spec = onnx_spec(onnx.load(str(folder / "model.fp32.onnx")))
    arts = [Artifact(folder / f"model.{p}.onnx", ModelFormat.ONNX, Precision(p), "tensorrt", spec,
                     sha256_file(folder / f"model.{p}.onnx"),
                     {"optimization_profile": {"x": {k: bundle["inputs"][0][k] for k in ("min", "opt", "max")}},
                      "tensorrt_majors": [10, 11], "profile": "bundle"})
            for p in ("fp32", "fp16")]
    (out / "manifest.json").write_text(json.dumps({"artifacts": [a.to_dict(root=out) for a in arts]}))
    assert [r.precision for r in build_engines(folder)] == ["fp32", "fp16"]


# ------------------------------------------------------------------------------------------------ runners


def test_runner_runs_the_engine_through_device_buffers(device, gpu_bundle, tmp_path):
    _, rt = device("10.3.0.30")
    folder = _fresh(gpu_bundle, tmp_path)
    build_engine(folder, "fp16")
    spec = onnx_spec(onnx.load(str(folder / "model.fp16.onnx")))
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with TensorRTRunner(folder / "model.fp16.engine", spec) as runner:
        assert runner.runtime.startswith("tensorrt 10.3.0.30 on Orin (sm 8.7, CUDA 12.6)")
        y = runner.infer({"x": x})["y"]
        np.testing.assert_allclose(y, np.repeat(x.reshape(3, -1).sum(1, keepdims=True), 10, axis=1), rtol=1e-6)
        assert len(rt.memory) == 2  # one device buffer per I/O tensor
        timing = runner.time_device({"x": x[:1]}, warmup=2, iterations=5)
    assert timing["gpu_ms"]["p50"] == pytest.approx(0.25) and timing["iterations"] == 5
    assert set(timing["host_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert rt.memory == {}  # freed on close


def test_runner_refuses_an_engine_built_for_another_gpu(device, gpu_bundle, tmp_path):
    device("10.3.0.30")
    folder = _fresh(gpu_bundle, tmp_path)
    build_engine(folder, "int8")
    side_path = folder / "model.int8.engine.json"
    side = json.loads(side_path.read_text())
    side_path.write_text(json.dumps({**side, "gpu_name": "NVIDIA A100", "compute_capability": "8.0"}))
    spec = onnx_spec(onnx.load(str(folder / "model.int8.onnx")))
    with pytest.raises(InputFileError, match=r"GPU NVIDIA A100 \(sm 8.0\) vs Orin \(sm 8.7\)") as info:
        TensorRTRunner(folder / "model.int8.engine", spec).load()
    assert info.value.hint.endswith(f"edgec engine build {folder} --precision int8")
    side_path.write_text(json.dumps({**side, "tensorrt": "10.3.0.29"}))
    with pytest.raises(InputFileError, match="TensorRT 10.3.0.29 vs 10.3.0.30 here"):
        TensorRTRunner(folder / "model.int8.engine", spec).load()
    # A version-compatible engine loads on a later release of the same major.
    side_path.write_text(json.dumps({**side, "tensorrt": "10.3.0.29", "version_compatible": True}))
    with TensorRTRunner(folder / "model.int8.engine", spec) as runner:
        assert runner.infer({"x": np.ones((1, 1, 8, 8), np.float32)})["y"].shape == (1, 10)


def test_target_opens_the_engine_on_a_device_and_the_estimate_elsewhere(device, gpu_bundle, tmp_path, monkeypatch):
    from edgec.compiler.types import Artifact, ModelFormat

    folder = _fresh(gpu_bundle, tmp_path)
    spec = onnx_spec(onnx.load(str(folder / "model.fp16.onnx")))
    art = Artifact(folder / "model.fp16.onnx", ModelFormat.ONNX, Precision.FP16, "tensorrt", spec, "",
                   {"engine": "model.fp16.engine", "tensorrt_majors": [10, 11], "device": "gpu"})
    device("10.3.0.30", devices=0)
    runner = TensorRTTarget().open(art)
    assert isinstance(runner, HostEstimateRunner)
    with runner:
        assert "off-device estimate for TensorRT 10.x/11.x on gpu" in runner.runtime
        assert runner.infer({"x": np.ones((2, 1, 8, 8), np.float32)})["y"].shape == (2, 10)
    device("10.3.0.30")
    with pytest.raises(TargetUnavailableError, match="no TensorRT engine") as info:
        TensorRTTarget().open(art)
    assert info.value.hint == f"build it first: edgec engine build {folder} --precision fp16"
    build_engine(folder, "fp16")
    assert isinstance(TensorRTTarget().open(art), TensorRTRunner)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_engine_build(device, gpu_bundle, tmp_path):
    from edgec.cli import cli

    device("11.4.1.3", name=b"NVIDIA L4", cc=(8, 9))
    folder = _fresh(gpu_bundle, tmp_path)
    cache = tmp_path / "shared.cache"
    r = CliRunner().invoke(cli, ["engine", "build", str(folder), "-p", "fp16", "--timing-cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "model.fp16.engine" in r.stdout and "TensorRT 11.4.1.3 on NVIDIA L4" in r.stdout
    assert cache.read_bytes() == b"timing-cache:11.4.1.3"


def test_cli_dla_options_exclude_each_other(device, orin_dla_bundle, tmp_path):
    from edgec.cli import cli

    device("10.3.0.30", dla_cores=2)
    r = CliRunner().invoke(cli, ["engine", "build", str(_fresh(orin_dla_bundle, tmp_path)), "--dla-core", "0", "--no-dla"])
    assert r.exit_code == 2 and "exclude each other" in r.stderr


def test_cli_engine_build_without_a_device(device, gpu_bundle, tmp_path):
    from edgec.cli import cli

    device("10.3.0.30", devices=0)
    r = CliRunner().invoke(cli, ["engine", "build", str(_fresh(gpu_bundle, tmp_path))])
    assert r.exit_code == 5
    assert "error: building a TensorRT engine needs a CUDA device" in r.stderr and "hint:" in r.stderr


def test_console_script_on_this_machine(gpu_bundle, tmp_path, edgec_cli):
    """The installed `edgec`, real cuda-python (or none), no GPU: a clean exit code, never a crash."""
    r = edgec_cli("engine", "build", _fresh(gpu_bundle, tmp_path), "-p", "fp16")
    if cudart.device_count()[0]:
        pytest.skip("this machine has a CUDA device")
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_real_cuda_python_reports_no_device_cleanly():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install 'cuda-python')")
    count, why = cudart.device_count()
    if count:
        pytest.skip("this machine has a CUDA device")
    assert why.startswith("cudaGetDeviceCount")
    with pytest.raises(TargetUnavailableError, match="needs a CUDA device"):
        cudart.require_device("running a TensorRT engine")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_tensorrt_engines_against_onnxruntime(gpu_bundle, tmp_path):
    """On a machine with TensorRT and a CUDA device: build and run every precision, compare with FP32 on ORT."""
    import importlib.util

    from edgec.compiler.onnxutil import ort_session

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs the tensorrt Python package")
    if cudart.device_count()[0] == 0:
        pytest.skip(f"needs a CUDA device ({cudart.device_count()[1]})")
    folder = _fresh(gpu_bundle, tmp_path)
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    reference = ort_session(folder / "model.fp32.onnx").run(None, {"x": x})[0]
    for precision, tolerance in (("fp32", 1e-3), ("fp16", 2e-2), ("int8", 0.2)):
        build_engine(folder, precision)
        spec = onnx_spec(onnx.load(str(folder / f"model.{precision}.onnx")))
        with TensorRTRunner(folder / f"model.{precision}.engine", spec) as runner:
            y = runner.infer({"x": x})["y"]
            timing = runner.time_device({"x": x[:1]}, warmup=5, iterations=20)
        assert y.shape == reference.shape and np.abs(y - reference).max() < tolerance, precision
        assert timing["gpu_ms"]["p50"] > 0


def test_jetson_versions_from_the_l4t_release_file(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8\n")
    assert jetson_versions(release)["l4t"] == "36.4.3"
    assert jetson_versions(tmp_path / "absent") == {"l4t": None, "jetpack": None}
