"""Every zoo model (tests/zoo.py) builds for every target it names, with default flags, through the installed
`edgec` console script; the INT8 artifacts keep what the model is for."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo

pytestmark = pytest.mark.slow

#: Targets that only build INT8 (microcontrollers): built in their own `edgec build`, without -p.
INT8_ONLY = {"mcu", "cortex-m4", "cortex-m7", "cortex-m55", "ethos-u55-256", "ethos-u65", "cortex-m55-ethos-u55-128"}


@pytest.fixture(scope="module")
def edgec_cli_module(tmp_path_factory):
    from cliutil import run_edgec

    cache = tmp_path_factory.mktemp("zoo-cache")
    return lambda *args, **kw: run_edgec(*args, env={"EDGEC_CACHE_DIR": str(cache), **kw.pop("env", {})}, **kw)


@pytest.fixture(scope="module", params=sorted(zoo.ZOO))
def zoo_build(request, tmp_path_factory, edgec_cli_module):
    name = request.param
    entry = zoo.ZOO[name]
    folder = tmp_path_factory.mktemp(f"zoo-{name}")
    case = entry.make(folder)
    builds = {}
    for group in ([t for t in entry.targets if t not in INT8_ONLY], [t for t in entry.targets if t in INT8_ONLY]):
        if not group:
            continue
        out = folder / f"build-{group[0]}"
        precisions = [] if group[0] in INT8_ONLY else ["-p", "fp32", "-p", "int8"]
        targets = [arg for t in group for arg in ("--target", t)]
        done = edgec_cli_module("-q", "build", case.checkpoint, *targets, *precisions, "--calib", case.calib,
                                *case.args, "--out", out, "--json", "-", cwd=folder)
        assert done.returncode == 0, f"{name} {group}: {done.stderr}"
        assert "Traceback" not in done.stderr
        builds.update({t: (out, json.loads(done.stdout)) for t in group})
    return name, case, builds


def test_every_target_builds(zoo_build):
    name, _, builds = zoo_build
    for target, (out, manifest) in builds.items():
        arts = manifest["artifacts"]
        assert arts, f"{name} {target}: no artifacts"
        for a in arts:
            assert (out / a["path"]).is_file()
        if target in INT8_ONLY:
            # The mcu target refuses float ops, so a build that succeeded is full-integer.
            for mcu in [a for a in arts if a["format"] == "tflite"]:
                assert mcu["metadata"]["arena"]["recorded_bytes"] > 0


def _outputs(out, artifact_name, eval_path):
    from edgec.benchmarks.harness import load_build, run_outputs
    from edgec.calibration_data import load_dataset

    artifacts, _ = load_build(out)
    (art,) = [a for a in artifacts if a.name == artifact_name]
    data = load_dataset(eval_path, art.spec, role="evaluation")
    return run_outputs(art, data.samples)[0]


def test_stateful_vad_agrees_with_fp32_on_speech_decisions(zoo_build):
    """Calibrated with (x, state) pairs from a module:function reader that runs the FP32 model over audio, the
    INT8 VAD of every target takes the same speech/non-speech decisions as FP32 on another signal."""
    name, case, builds = zoo_build
    if name != "vad":
        pytest.skip("VAD only")
    for target, (out, manifest) in builds.items():
        profile = manifest["artifacts"][0]["metadata"]["profile"]
        ref = np.array([o["output_0"].ravel()[0] for o in _outputs(out, f"{profile}/fp32", case.eval_data)])
        q = np.array([o["output_0"].ravel()[0] for o in _outputs(out, f"{profile}/int8", case.eval_data)])
        agreement = np.mean((ref > 0.5) == (q > 0.5))
        assert agreement >= 0.95, f"{target}: INT8 agrees with FP32 on {agreement:.1%} of the decisions"
        labels = np.load(case.labels)
        assert np.mean((ref > 0.5) == labels) >= 0.8, "the zoo VAD itself should detect the synthetic speech"


def test_dynamic_detector_gets_an_optimization_profile_from_the_calibration_samples(zoo_build):
    name, _, builds = zoo_build
    if name != "yolo":
        pytest.skip("detector only")
    out, _ = builds["jetson"]
    bundle = json.loads((out / "jetson-orin-nano" / "bundle.json").read_text())
    (images,) = bundle["inputs"]
    assert images["min"] == [1, 3, 64, 64] and images["max"] == [8, 3, 64, 64]
    assert images["profile_from"] == ["batch options", "fixed", "calibration samples", "calibration samples"]


def test_encoder_int8_is_smoothed_from_its_calibration(zoo_build):
    """The attention model's cpu INT8 (dynamic) and jetson INT8 (TensorRT QDQ) are quantized from a smoothed graph:
    the calibration took the per-channel maxima of every linear layer's input, and each build records what it
    smoothed."""
    name, _, builds = zoo_build
    if name != "encoder":
        pytest.skip("encoder only")
    for target, runtime in (("cpu", "onnxruntime"), ("jetson", "tensorrt")):
        _, manifest = builds[target]
        (int8,) = [a for a in manifest["artifacts"] if a["precision"] == "int8" and a["target"] == runtime]
        meta = int8["metadata"]
        smoothing = meta["smoothing"] if runtime == "onnxruntime" else meta["int8"]["smoothing"]
        assert smoothing["applied"] and smoothing["tensors"] >= 2 and smoothing["alpha"] == 0.8, target
        assert meta["verification"]["passed"]
