"""RunResult / BenchResults as JSON."""

from __future__ import annotations

import json

import pytest

from bench_models import make_results
from edgec.benchmarks.results import BenchResults, cpu_model, environment
from edgec.compiler.errors import InputFileError


def test_json_round_trip_is_exact(tmp_path):
    results = make_results()
    path = results.to_json(tmp_path / "out" / "bench.json")
    back = BenchResults.from_json(path)
    assert back == results
    assert back.to_dict() == results.to_dict()
    assert back.runs[1].accuracy.accuracy_drop == pytest.approx(20.0)


def test_json_is_strict_and_keeps_raw_latencies(tmp_path):
    path = make_results().to_json(tmp_path / "bench.json")
    d = json.loads(path.read_text())
    assert d["runs"][1]["latency"]["latencies_ms"] == [1.0, 1.1, 1.2, 5.0]
    assert d["runs"][0]["accuracy"]["drop_basis"] == "labels"
    assert d["runs"][0]["accuracy"]["per_output"]["logits"]["snr_db"] == 200.0
    assert d["samples"] == 10 and d["reference"] == "onnxruntime/fp32"


def test_missing_accuracy_round_trips_as_none(tmp_path):
    results = make_results()
    results.runs[0].accuracy = None
    back = BenchResults.from_json(results.to_json(tmp_path / "b.json"))
    assert back.runs[0].accuracy is None and back == results


def test_from_json_errors(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        BenchResults.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="cannot read"):
        BenchResults.from_json(bad)
    other = tmp_path / "other.json"
    other.write_text('{"artifacts": []}')
    with pytest.raises(InputFileError, match="no 'runs'"):
        BenchResults.from_json(other)


def test_environment_fields():
    env = environment("onnxruntime 1.32.0")
    assert set(env) == {"platform", "cpu", "cores", "python", "numpy", "runtime", "hostname"}
    assert env["runtime"] == "onnxruntime 1.32.0"
    assert env["cpu"] == cpu_model() and env["cpu"]
    assert env["numpy"].split(".")[0].isdigit()
