"""End to end through the installed `edgec` console script on the trained digits CNN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgec.compiler.types import sha256_file


@pytest.fixture(scope="module")
def built(digits_assets, tmp_path_factory, edgec_cli_module):
    out = tmp_path_factory.mktemp("build") / "out"
    r = edgec_cli_module(
        "build", digits_assets["checkpoint"], "--target", "cpu", "-p", "fp32", "-p", "fp16", "-p", "int8",
        "--calib", digits_assets["calib"], "--out", out,
    )
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture(scope="module")
def edgec_cli_module(tmp_path_factory):
    from cliutil import run_edgec

    cache = tmp_path_factory.mktemp("module-cache")
    return lambda *args, **kw: run_edgec(*args, env={"EDGEC_CACHE_DIR": str(cache), **kw.pop("env", {})}, **kw)


def test_build_writes_artifacts_and_manifest(built, digits_assets):
    out, r = built
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["precision"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"fp32", "fp16", "int8"}
    for a in arts.values():
        path = out / a["path"]
        assert path.parent.name == "cpu" and path.is_file()
        assert sha256_file(path) == a["sha256"]
        assert a["format"] == "onnx" and a["target"] == "onnxruntime"
        assert a["inputs"][0]["shape"] == [1, 1, 8, 8] and a["inputs"][0]["layout"] == "NCHW"
        assert a["outputs"][0]["shape"] == [1, 10]
    assert arts["int8"]["metadata"]["fusion"]["float"] == 0
    assert manifest["export"]["exporter"] == "dynamo"
    assert manifest["export"]["max_abs_diff"] < 1e-4
    assert manifest["export"]["against"] == "calibration samples"
    # 200 samples given: a seeded 20% (40) is held out to verify the INT8 build, the other 160 calibrate
    assert manifest["calibration"]["samples"] == 160 and len(manifest["calibration"]["sha256"]) == 64
    assert manifest["verification"]["samples"] == 40 and not manifest["verification"]["also_calibration"]
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(manifest["tool_versions"])
    assert manifest["recipe"]["precision"] == ["fp32", "fp16", "int8"]
    assert manifest["checkpoint"]["sha256"] == sha256_file(digits_assets["checkpoint"])
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert Path(recipe["checkpoint"]).is_absolute()
    assert "cpu/model.int8.onnx" in r.stdout and "int8 kernels" in r.stdout
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_second_build_reuses_every_stage(built, digits_assets, edgec_cli_module):
    out, _ = built
    again = out.parent / "again"
    start = time.perf_counter()
    r = edgec_cli_module(
        "build", digits_assets["checkpoint"], "--target", "cpu", "-p", "fp32", "-p", "fp16", "-p", "int8",
        "--calib", digits_assets["calib"], "--out", again,
    )
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    stages = json.loads((again / "manifest.json").read_text())["stages"]
    assert all(s["cached"] for s in stages if s["stage"].startswith("cpu/")), stages
    # Stages whose outputs nothing needs are not even restored: no load, no calibration.
    assert not any(s["ran"] for s in stages), "a cached build must not even load the checkpoint"
    first = {a["path"]: a["sha256"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    second = {a["path"]: a["sha256"] for a in json.loads((again / "manifest.json").read_text())["artifacts"]}
    assert first == second
    assert elapsed < 30  # generous: a cached build does no model work at all


def test_no_cache_builds_are_byte_identical(digits_assets, tmp_path, edgec_cli_module):
    shas = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = edgec_cli_module(
            "build", digits_assets["checkpoint"], "-p", "fp32", "-p", "fp16", "-p", "int8",
            "--calib", digits_assets["calib"], "--out", out, "--no-cache",
        )
        assert r.returncode == 0, r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert not any(s["cached"] for s in manifest["stages"])
        shas.append({a["path"]: a["sha256"] for a in manifest["artifacts"]})
    assert shas[0] == shas[1]


def test_bench_reports_and_gates(built, digits_assets, tmp_path, edgec_cli_module):
    out, _ = built
    results = tmp_path / "results.json"
    r = edgec_cli_module(
        "bench", out, "--data", digits_assets["eval"], "--labels", digits_assets["eval_labels"],
        "--iterations", "20", "--warmup", "2", "--json", results, "--max-accuracy-drop", "1.0",
    )
    assert r.returncode == 0, r.stderr
    for name in ("cpu/fp32", "cpu/fp16", "cpu/int8"):
        assert name in r.stdout
    assert "gates: passed" in r.stdout
    data = json.loads(results.read_text())
    runs = {run["name"]: run for run in data["runs"]}
    int8 = runs["cpu/int8"]
    assert int8["latency"]["iterations"] == 20
    assert int8["latency"]["p50_ms"] <= int8["latency"]["p90_ms"] <= int8["latency"]["p99_ms"]
    acc = int8["accuracy"]["per_output"]["output"]
    assert acc["top1_agreement"] >= 99.0
    assert acc["reference_accuracy"] > 97.0
    assert abs(acc["reference_accuracy"] - acc["accuracy"] - acc["accuracy_drop"]) < 1e-6

    broken = edgec_cli_module(
        "bench", out, "--data", digits_assets["eval"], "--iterations", "5", "--warmup", "1",
        "--max-latency-ms", "0.000001",
    )
    assert broken.returncode == 6
    assert "error:" in broken.stderr and "cpu/int8" in broken.stderr and "Traceback" not in broken.stderr


def test_bench_against_the_torch_checkpoint(built, digits_assets, edgec_cli_module):
    out, _ = built
    r = edgec_cli_module(
        "bench", out / "cpu" / "model.int8.onnx", "--data", digits_assets["eval"], "--samples", "50",
        "--reference", digits_assets["checkpoint"], "--iterations", "5", "--warmup", "1",
    )
    assert r.returncode == 0, r.stderr
    assert "torch (digits_cnn.pt2)" in r.stdout


def test_interrupted_build_leaves_nothing(digits_assets, tmp_path):
    slow = tmp_path / "slowdata.py"
    slow.write_text(
        "import sys, time\nimport numpy as np\n"
        "def data():\n"
        "    print('reading slowly', file=sys.stderr, flush=True)\n"
        "    time.sleep(60)\n"
        "    return [np.zeros((1, 1, 8, 8), np.float32)]\n"
    )
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("edgec")
    proc = subprocess.Popen(
        [str(exe), "build", str(digits_assets["checkpoint"]), "-p", "int8", "--calib", f"{slow}:data", "--out", str(out)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "EDGEC_CACHE_DIR": str(tmp_path / "cache")},
    )
    for line in proc.stderr:
        if "reading slowly" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_failed_build_keeps_the_previous_output(built, digits_assets, tmp_path, edgec_cli_module):
    out, _ = built
    before = (out / "manifest.json").read_text()
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.full((4, 1, 8, 8), np.nan, np.float32))
    r = edgec_cli_module("build", digits_assets["checkpoint"], "-p", "int8", "--calib", bad, "--out", out)
    assert r.returncode == 3
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
