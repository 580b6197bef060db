"""The device runner: a real build run by ``python -m edgec.benchmarks.device``, and in a venv without torch."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from edgec.benchmarks import device
from edgec.benchmarks.remote import merge, runner_files
from edgec.benchmarks.results import BenchResults

SAMPLES = 6
_VENVS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A two-artifact cpu build (fp32, int8) of a small MLP, through edgec.api.build; and its data file."""
    torch = pytest.importorskip("torch")
    from edgec import api
    from edgec.recipe import Recipe

    work = tmp_path_factory.mktemp("device-build")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 16),)), str(work / "mlp.pt2"))
    rng = np.random.default_rng(0)
    np.savez(work / "calib.npz", x=rng.standard_normal((32, 16)).astype(np.float32))
    result = api.build(Recipe(
        checkpoint=str(work / "mlp.pt2"), target=["cpu"], precision=["fp32", "int8"], calib=str(work / "calib.npz"),
        inputs=["x:Nx16"], out=str(work / "out"), cache=False,
    ))
    data = work / "data.npz"
    x = rng.standard_normal((SAMPLES, 16)).astype(np.float32)
    np.savez(data, x=x)
    feeds = [{"x": x[i:i + 1]} for i in range(SAMPLES)]
    return result.out, data, result.artifacts, feeds


def make_venv(tmp_path_factory, name: str, packages: list[str]) -> Path:
    """A fresh venv holding only ``packages`` (from the configured index/cache), once per test session."""
    if name not in _VENVS:
        folder = tmp_path_factory.mktemp(f"venv-{name}")
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        python = folder / "bin" / "python"
        if packages:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                capture_output=True, text=True, timeout=300,
            )
            if done.returncode != 0:
                pytest.skip(f"cannot pip install {packages} into a fresh venv: {done.stderr.strip()[-300:]}")
        _VENVS[name] = python
    return _VENVS[name]


def ship_runner(folder: Path) -> Path:
    """Copy the runner as ``edgec bench --remote`` ships it: the files of ``runner_files()``, nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, local in runner_files().items():
        shutil.copy(local, folder / name)
    return folder / "edgec_device.py"


def run_runner(python, *args, timeout=120, **kw):
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def test_runner_runs_every_artifact_and_merges_into_bench_results(tiny_build, tmp_path):
    out, data, artifacts, feeds = tiny_build
    done = run_runner(sys.executable, "-m", "edgec.benchmarks.device", out, "--data", data, "--iterations", 15,
                      "--warmup", 2, "--json", tmp_path / "r.json", "--outputs", tmp_path / "o.npz")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema"] == device.SCHEMA and doc["samples"] == SAMPLES and doc["batch"] == 1
    assert [r["name"] for r in doc["runs"]] == ["cpu/fp32", "cpu/int8"]
    assert all(len(r["latencies_ms"]) == 15 and r["runtime"].startswith("onnxruntime 1.") for r in doc["runs"])
    env = doc["environment"]
    assert env["cpu"] and env["os"] and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["runtimes"]["onnxruntime"].startswith("onnxruntime") and isinstance(env["thermal_c_start"], dict)
    assert not any(doc["imported"].values()), doc["imported"]

    with np.load(tmp_path / "o.npz") as f:
        outputs = {k: f[k] for k in f.files}
    results = merge(doc, outputs, artifacts, feeds, remote="local")
    again = BenchResults.from_dict(json.loads(json.dumps(results.to_dict(), allow_nan=False)))
    fp32, int8 = again.by_name("cpu/fp32"), again.by_name("cpu/int8")
    assert fp32.is_reference and fp32.accuracy.primary.top1_agreement == 100.0
    assert int8.accuracy.primary.cosine > 0.9 and int8.latency.iterations == 15
    assert int8.environment["cpu"] == env["cpu"] and int8.environment["runtime"] == int8.runtime


def test_runner_selects_an_artifact_and_names_unknown_ones(tiny_build, tmp_path):
    out, data, _, _ = tiny_build
    ok = run_runner(sys.executable, "-m", "edgec.benchmarks.device", out, "--data", data, "--artifact", "cpu/int8",
                    "--iterations", 3, "--json", tmp_path / "r.json")
    assert ok.returncode == 0, ok.stderr
    assert [r["name"] for r in json.loads((tmp_path / "r.json").read_text())["runs"]] == ["cpu/int8"]
    bad = run_runner(sys.executable, "-m", "edgec.benchmarks.device", out, "--data", data, "--artifact", "gpu/fp8",
                     "--json", tmp_path / "bad.json")
    assert bad.returncode == device.EXIT_USAGE and "gpu/fp8" in bad.stderr and "cpu/fp32" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_runner_without_a_build_or_the_runtime_fails_in_one_line(tiny_build, tmp_path):
    out, data, _, _ = tiny_build
    no_build = run_runner(sys.executable, "-m", "edgec.benchmarks.device", tmp_path, "--data", data,
                          "--json", tmp_path / "r.json")
    assert no_build.returncode == device.EXIT_INPUT and "manifest.json" in no_build.stderr
    # a Python where onnxruntime cannot be imported, as on a device without it
    hide = ("import sys; sys.modules['onnxruntime'] = None; from edgec.benchmarks.device import main; "
            f"sys.exit(main({[str(out), '--data', str(data), '--json', str(tmp_path / 'r.json')]!r}))")
    missing = run_runner(sys.executable, "-c", hide)
    assert missing.returncode == device.EXIT_UNAVAILABLE
    assert missing.stderr.strip().count("\n") == 0 and "pip install onnxruntime" in missing.stderr
    assert not (tmp_path / "r.json").exists()


def test_runner_keeps_to_python_3_10_and_light_imports():
    source = Path(device.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 10))
    assert not any(isinstance(n, ast.Match) for n in ast.walk(tree))
    top_level = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names
    }
    assert top_level <= set(sys.stdlib_module_names), top_level - set(sys.stdlib_module_names)
    assert "tomllib" not in source and "ExceptionGroup" not in source
    assert list(runner_files()) == ["edgec_device.py"]


def test_tflite_runtimes_are_tried_in_order(monkeypatch):
    import types

    for module in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, module, None)
    fake = types.ModuleType("tflite_runtime.interpreter")
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    mod, name = device._import_first(device._TFLITE_RUNTIMES, "TFLite artifacts")
    assert mod is fake and name.startswith("tflite-runtime")
    assert [d for _, d in device._TFLITE_RUNTIMES] == ["ai-edge-litert", "tflite-runtime", "tensorflow"]


@pytest.mark.slow
def test_runner_in_a_venv_with_only_numpy_and_onnxruntime(tiny_build, tmp_path, tmp_path_factory):
    """The runner as shipped, in a fresh venv holding numpy and onnxruntime only: torch is never imported."""
    out, data, _, _ = tiny_build
    python = make_venv(tmp_path_factory, "device", ["numpy==2.4.6", "onnxruntime==1.32.0"])
    assert run_runner(python, "-c", "import torch").returncode != 0, "the device venv must not hold torch"
    assert run_runner(python, "-c", "import edgec").returncode != 0, "the device venv must not hold edgec"
    script = ship_runner(tmp_path / "shipped")
    done = run_runner(python, "-X", "importtime", script, out, "--data", data, "--iterations", 5,
                      "--json", tmp_path / "r.json", "--outputs", tmp_path / "o.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # -X importtime lists every module imported (and attempted: the optional psutil shows up though absent)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and "numpy" in imported
    assert not imported & {"torch", "onnx", "click", "yaml", "edgec"}, imported & {"torch", "onnx", "edgec"}
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["runs"]) == 2 and not any(doc["imported"].values())
    assert doc["environment"]["python_executable"] == str(python)
    assert doc["runs"][0]["peak_rss_bytes"] is None  # psutil is optional and absent here


@pytest.fixture(scope="module")
def tflite_build(tiny, tmp_path_factory):
    """An arm (rpi5) build, fp32 and full-integer int8 .tflite with NHWC I/O, of the tiny CNN; and its data."""
    pytest.importorskip("litert_torch", reason="the arm target needs litert-torch (pip install 'edgec[arm]')")
    from edgec import api
    from edgec.recipe import Recipe

    work = tmp_path_factory.mktemp("device-tflite")
    result = api.build(Recipe(
        checkpoint=str(tiny / "tiny.pt2"), target=["rpi5"], precision=["fp32", "int8"],
        calib=str(tiny / "calib.npz"), out=str(work / "out"),
    ))
    x = np.random.default_rng(5).random((SAMPLES, 1, 8, 8), dtype=np.float32)
    np.savez(work / "data.npz", x=x)
    return result.out, work / "data.npz", result.artifacts, [{"x": x[i:i + 1]} for i in range(SAMPLES)]


def test_runner_in_a_venv_with_numpy_onnxruntime_and_litert(tflite_build, tmp_path, tmp_path_factory):
    """The shipped runner runs .tflite artifacts on ai-edge-litert in a venv without torch, converting NCHW float
    data to the file's NHWC int8 input itself, and gives the host runner's outputs."""
    from edgec.benchmarks.harness import run_outputs

    out, data, artifacts, feeds = tflite_build
    python = make_venv(tmp_path_factory, "device-litert",
                       ["numpy==2.4.6", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0"])
    assert run_runner(python, "-c", "import torch").returncode != 0, "the device venv must not hold torch"
    script = ship_runner(tmp_path / "shipped")
    done = run_runner(python, "-X", "importtime", script, out, "--data", data, "--iterations", 5,
                      "--json", tmp_path / "r.json", "--outputs", tmp_path / "o.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "ai_edge_litert" in imported and not imported & {"torch", "onnx", "click", "yaml", "edgec", "tensorflow"}
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in doc["runs"]] == ["rpi5/fp32", "rpi5/int8"]
    assert all(r["runtime"].startswith("ai-edge-litert 2.3.0") for r in doc["runs"])
    assert doc["runs"][1]["outputs"] == [t.name for t in artifacts[1].spec.outputs]

    with np.load(tmp_path / "o.npz") as f:
        outputs = {k: f[k] for k in f.files}
    for i, artifact in enumerate(artifacts):
        host, _ = run_outputs(artifact, feeds)
        name = artifact.spec.outputs[0].name
        for j, h in enumerate(host):
            np.testing.assert_allclose(outputs[f"a{i}.s{j}.o0"], h[name], rtol=0, atol=1e-6)
    results = merge(doc, outputs, artifacts, feeds, remote="local")
    int8 = results.by_name("rpi5/int8")
    assert results.by_name("rpi5/fp32").is_reference and int8.accuracy.primary.cosine > 0.99
