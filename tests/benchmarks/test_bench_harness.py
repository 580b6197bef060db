"""bench_artifacts end to end on real ONNX Runtime runners, load_build, feed and output matching."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench_models import FEATURES, classifier_weights, eval_feeds, make_artifact, save_classifier
from edgec.benchmarks.harness import _adapt_feeds, _match_outputs, bench_artifacts, load_build
from edgec.benchmarks.results import BenchResults
from edgec.compiler.errors import CalibrationError, CheckpointError, ConfigError, InputFileError
from edgec.compiler.types import InputSpec, Precision, TensorSpec


def argmax_of(model_path, feeds) -> np.ndarray:
    """Top-1 classes straight from the weights stored in the ONNX file, independent of the harness."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_path)).graph.initializer}
    return np.array([int(np.argmax(f["x"] @ inits["W"] + inits["B"])) for f in feeds])


@pytest.fixture
def feeds():
    return eval_feeds(40)


def test_end_to_end_against_the_fp32_artifact(fp32_artifact, perturbed_artifact, feeds):
    ref_top = argmax_of(fp32_artifact.path, feeds)
    cand_top = argmax_of(perturbed_artifact.path, feeds)
    labels = ref_top.copy()
    labels[:6] = (labels[:6] + 1) % 10  # the reference gets 34/40 right
    messages: list[str] = []

    results = bench_artifacts(
        [fp32_artifact, perturbed_artifact],
        feeds,
        labels=labels,
        warmup=2,
        iterations=15,
        progress=messages.append,
    )

    assert [r.name for r in results.runs] == ["onnxruntime/fp32", "onnxruntime/int8"]
    fp32, int8 = results.runs
    assert fp32.is_reference and not int8.is_reference
    assert results.samples == 40 and "onnxruntime/fp32" in results.reference

    assert fp32.accuracy.agreement == 100.0 and fp32.accuracy.per_output["logits"].cosine == pytest.approx(
        1.0
    )
    expected_agreement = float(np.mean(ref_top == cand_top) * 100)
    assert 0 < int8.accuracy.agreement < 100
    assert int8.accuracy.agreement == pytest.approx(expected_agreement)
    assert int8.accuracy.reference_accuracy == pytest.approx(85.0)
    assert int8.accuracy.accuracy == pytest.approx(float(np.mean(cand_top == labels) * 100))
    assert int8.accuracy.accuracy_drop == pytest.approx(
        int8.accuracy.reference_accuracy - int8.accuracy.accuracy
    )
    assert int8.accuracy.drop_basis == "labels"
    assert int8.accuracy.per_output["logits"].cosine < 0.999
    assert int8.accuracy.reference.startswith("onnxruntime/fp32")

    for run, art in ((fp32, fp32_artifact), (int8, perturbed_artifact)):
        assert run.latency.iterations == 15 and run.latency.warmup == 2
        assert run.runtime.startswith("onnxruntime ")
        assert run.environment["runtime"] == run.runtime
        assert run.size_bytes == art.path.stat().st_size and run.sha256 == art.sha256
        assert run.threads == 1 and run.started_at
        if run.latency.peak_rss_bytes is not None:
            assert run.latency.peak_rss_bytes >= run.latency.peak_rss_delta_bytes
    assert any("onnxruntime/int8: timing" in m for m in messages)


def test_results_survive_json(tmp_path, fp32_artifact, perturbed_artifact, feeds):
    results = bench_artifacts([fp32_artifact, perturbed_artifact], feeds[:5], warmup=0, iterations=3)
    assert BenchResults.from_json(results.to_json(tmp_path / "b.json")) == results


def test_reference_callable(fp32_artifact, perturbed_artifact, feeds):
    w, b = classifier_weights()
    results = bench_artifacts(
        [fp32_artifact, perturbed_artifact],
        feeds,
        reference=lambda f: {"logits": f["x"] @ w + b},
        reference_name="numpy classifier",
        warmup=0,
        iterations=3,
    )
    fp32, int8 = results.runs
    assert results.reference == "numpy classifier"
    assert not fp32.is_reference and not int8.is_reference
    assert fp32.accuracy.agreement == 100.0
    assert fp32.accuracy.per_output["logits"].max_abs_error < 1e-4
    assert int8.accuracy.agreement < 100.0
    assert int8.accuracy.drop_basis == "agreement"
    assert int8.accuracy.accuracy_drop == pytest.approx(100.0 - int8.accuracy.agreement)


def test_explicit_reference_artifact_outside_the_list(fp32_artifact, perturbed_artifact, feeds):
    results = bench_artifacts(
        [perturbed_artifact], feeds, reference_artifact=fp32_artifact, warmup=0, iterations=3
    )
    (int8,) = results.runs
    expected = (
        np.mean(argmax_of(fp32_artifact.path, feeds) == argmax_of(perturbed_artifact.path, feeds)) * 100
    )
    assert int8.accuracy.agreement == pytest.approx(expected)


def test_no_fp32_means_no_accuracy(perturbed_artifact, feeds):
    results = bench_artifacts([perturbed_artifact], feeds[:3], warmup=0, iterations=2)
    assert results.runs[0].accuracy is None and results.reference == ""


def test_both_references_is_a_config_error(fp32_artifact, feeds):
    with pytest.raises(ConfigError, match="not both"):
        bench_artifacts([fp32_artifact], feeds, reference=lambda f: {}, reference_artifact=fp32_artifact)


def test_no_samples_or_artifacts(fp32_artifact):
    with pytest.raises(CalibrationError):
        bench_artifacts([fp32_artifact], [])
    with pytest.raises(ConfigError):
        bench_artifacts([], eval_feeds(1))


def test_missing_artifact_file(tmp_path, fp32_artifact, feeds):
    fp32_artifact.path = tmp_path / "gone.onnx"
    with pytest.raises(InputFileError, match="gone.onnx"):
        bench_artifacts([fp32_artifact], feeds, iterations=1)


def test_outputs_and_inputs_matched_by_position(tmp_path, feeds):
    w, b = classifier_weights()
    ref = make_artifact(save_classifier(tmp_path / "ref.onnx", w, b, outputs=("logits", "embedding")))
    cand_path = save_classifier(
        tmp_path / "cand.onnx", w * 1.5, b, input_name="input", outputs=("scores", "doubled")
    )
    cand = make_artifact(cand_path, Precision.FP16)
    results = bench_artifacts([cand], feeds, reference_artifact=ref, warmup=0, iterations=2)
    acc = results.runs[0].accuracy
    assert list(acc.per_output) == ["logits", "embedding"]
    assert acc.per_output["embedding"].max_abs_error == 0.0
    assert acc.per_output["logits"].max_abs_error > 0.0
    assert acc.per_output["logits"].cosine > 0.99  # same direction, scaled weights


def test_output_count_mismatch_is_an_error(tmp_path, fp32_artifact, feeds):
    w, b = classifier_weights()
    other = make_artifact(save_classifier(tmp_path / "two.onnx", w, b, outputs=("a", "b")))
    with pytest.raises(CheckpointError, match="outputs"):
        bench_artifacts([other], feeds[:2], reference_artifact=fp32_artifact, warmup=0, iterations=1)


def test_match_outputs_prefers_names():
    assert _match_outputs(["a", "b"], ["b", "a"], "x") == {"a": "a", "b": "b"}
    assert _match_outputs(["a", "b"], ["p", "q"], "x") == {"p": "a", "q": "b"}
    assert _match_outputs(["a"], ["z", "a"], "x") == {"a": "a"}


def test_adapt_feeds_transposes_layout_and_casts():
    data_spec = InputSpec((TensorSpec("img", (1, 3, 4, 5), "float32", "NCHW"),))
    runner_spec = InputSpec((TensorSpec("pixels", (1, 4, 5, 3), "float16", "NHWC"),))
    x = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    out = _adapt_feeds({"img": x}, runner_spec, data_spec)
    assert list(out) == ["pixels"]
    assert out["pixels"].shape == (1, 4, 5, 3) and out["pixels"].dtype == np.float16
    assert out["pixels"][0, 2, 3, 1] == x[0, 1, 2, 3]
    back = _adapt_feeds(out, data_spec, runner_spec)
    np.testing.assert_array_equal(back["img"], x)


def test_adapt_feeds_keeps_matching_layouts_and_reports_missing_inputs():
    spec = InputSpec((TensorSpec("x", ("N", FEATURES)),))
    x = np.ones((2, FEATURES), np.float32)
    assert _adapt_feeds({"x": x}, spec, spec)["x"] is x
    two = InputSpec((TensorSpec("a", (1,)), TensorSpec("b", (1,))))
    with pytest.raises(CalibrationError, match="missing"):
        _adapt_feeds({"x": x}, two, spec)


def write_manifest(build, artifacts, extra=None):
    manifest = {
        "edgec_version": "0.1.0",
        "artifacts": [a.to_dict(root=build) for a in artifacts],
        **(extra or {}),
    }
    (build / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_load_build_reads_the_manifest(tmp_path, fp32_artifact, perturbed_artifact):
    write_manifest(tmp_path, [fp32_artifact, perturbed_artifact], {"inputs": [{"name": "x"}]})
    artifacts, manifest = load_build(tmp_path)
    assert [a.name for a in artifacts] == ["onnxruntime/fp32", "onnxruntime/int8"]
    assert artifacts[1].path == perturbed_artifact.path and artifacts[1].sha256 == perturbed_artifact.sha256
    assert artifacts[0].spec.input_names == ["x"]
    assert manifest["inputs"] == [{"name": "x"}]
    again, _ = load_build(tmp_path / "manifest.json")
    assert [a.path for a in again] == [a.path for a in artifacts]


def test_load_build_errors(tmp_path, fp32_artifact):
    with pytest.raises(InputFileError, match="not found"):
        load_build(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="manifest.json"):
        load_build(empty)
    write_manifest(tmp_path, [fp32_artifact])
    fp32_artifact.path.unlink()
    with pytest.raises(InputFileError, match="missing"):
        load_build(tmp_path)
    (tmp_path / "model.tflite").write_bytes(b"TFL3")
    with pytest.raises(InputFileError, match="on its own") as info:
        load_build(tmp_path / "model.tflite")
    assert "manifest.json" in info.value.hint


def test_load_single_onnx_file(perturbed_model, fp32_model):
    (art,), manifest = load_build(perturbed_model)
    assert art.precision == Precision.INT8 and art.target == "onnxruntime"
    assert art.spec.input_names == ["x"] and art.spec.outputs[0].name == "logits"
    assert len(art.sha256) == 64 and manifest["source"] == str(perturbed_model)
    (fp32,), _ = load_build(fp32_model)
    assert fp32.precision == Precision.FP32


def test_bench_a_loaded_build(tmp_path, fp32_artifact, perturbed_artifact):
    write_manifest(tmp_path, [fp32_artifact, perturbed_artifact])
    artifacts, _ = load_build(tmp_path)
    results = bench_artifacts(artifacts, eval_feeds(8), warmup=0, iterations=2)
    assert results.runs[0].is_reference and results.runs[1].accuracy.agreement is not None


def test_import_is_light_and_layered():
    code = (
        "import sys, edgec.benchmarks, edgec.benchmarks.harness, edgec.benchmarks.report\n"
        "import edgec.benchmarks.gates\n"
        "bad = [m for m in sys.modules if m in ('torch', 'onnx', 'onnxruntime', 'psutil', 'edgec.api')\n"
        "       or m.startswith(('edgec.cli', 'edgec.calibration_data'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runner_with_device_timing_reports_it(tmp_path, monkeypatch):
    """A runner that can time its accelerator (TensorRT's CUDA events) gets its figures into the results."""
    import edgec.benchmarks.harness as harness
    from edgec.benchmarks.results import BenchResults

    calls = []

    class DeviceRunner:
        runtime = "fake accelerator"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def input_specs(self):
            return art.spec

        def infer(self, feeds):
            return {t.name: np.zeros(t.concrete_shape(), np.float32) for t in art.spec.outputs}

        def time_device(self, feeds, warmup, iterations):
            calls.append((warmup, iterations))
            return {"gpu_ms": {"p50": 0.5}, "host_ms": {"p50": 0.9}, "iterations": iterations, "warmup": warmup}

    model = tmp_path / "m.onnx"
    save_classifier(model, *classifier_weights())
    art = make_artifact(model)
    monkeypatch.setattr(harness, "open_runner", lambda artifact, threads=None: DeviceRunner())
    feeds = [{art.spec.inputs[0].name: np.zeros(art.spec.inputs[0].concrete_shape(), np.float32)}]
    results = harness.bench_artifacts([art], feeds, warmup=2, iterations=7)
    assert calls == [(2, 7)]
    assert results.runs[0].device_latency["gpu_ms"]["p50"] == 0.5
    path = tmp_path / "r.json"
    results.to_json(path)
    assert BenchResults.from_json(path).runs[0].device_latency["host_ms"]["p50"] == 0.9


def test_running_an_artifact_builds_no_target(tmp_path, monkeypatch):
    """Opening a runner is the runtime side only: no Target is constructed (no options, no host facts)."""
    import torch

    import zoo_models
    from edgec.benchmarks.harness import open_runner
    from edgec.compiler.types import Artifact, InputSpec, ModelFormat, Precision, TensorSpec
    from edgec.targets.onnxruntime import target as ort_target

    path = tmp_path / "m.onnx"
    torch.onnx.export(zoo_models.tiny_cnn().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["x"])

    def no_build_side(*_args, **_kw):
        raise AssertionError("a Target was constructed to run a file")

    monkeypatch.setattr(ort_target.OnnxRuntimeTarget, "__init__", no_build_side)
    spec = InputSpec((TensorSpec("x", (1, 1, 8, 8), "float32"),), ())
    art = Artifact(path, ModelFormat.ONNX, Precision.FP32, "onnxruntime", spec)
    with open_runner(art, 1) as runner:
        out = runner.infer({"x": np.zeros((1, 1, 8, 8), np.float32)})
    assert np.asarray(next(iter(out.values()))).shape == (1, 10)
