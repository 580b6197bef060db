"""trtexec log parsing on recorded log text in trtexec's format (10.x on Jetson, 11.x on a desktop GPU, a failure)."""

from __future__ import annotations

import pytest

from edgec.targets.tensorrt.trtexec import parse_trtexec_log

JETSON_10 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --timingCacheFile=timing.cache
[11/20/2026-09:14:02] [I] === Model Options ===
[11/20/2026-09:14:02] [I] Format: ONNX
[11/20/2026-09:14:02] [I] Model: model.int8.onnx
[11/20/2026-09:14:02] [I] === System Options ===
[11/20/2026-09:14:02] [I] Device: 0
[11/20/2026-09:14:02] [I] DLACore:
[11/20/2026-09:14:41] [I] Engine built in 38.6147 sec.
[11/20/2026-09:14:44] [I] === Trace details ===
[11/20/2026-09:14:44] [I] Trace averages of 10 runs:
[11/20/2026-09:14:44] [I] Average on 10 runs - GPU latency: 3.41283 ms - Host latency: 3.52101 ms (enqueue 1.08112 ms)
[11/20/2026-09:14:44] [I]
[11/20/2026-09:14:44] [I] === Performance summary ===
[11/20/2026-09:14:44] [I] Throughput: 286.412 qps
[11/20/2026-09:14:44] [I] Latency: min = 3.39526 ms, max = 4.12256 ms, mean = 3.48925 ms, median = 3.47021 ms, percentile(90%) = 3.55127 ms, percentile(95%) = 3.60107 ms, percentile(99%) = 3.91235 ms
[11/20/2026-09:14:44] [I] Enqueue Time: min = 0.97412 ms, max = 1.60449 ms, mean = 1.07983 ms, median = 1.06396 ms, percentile(90%) = 1.14111 ms, percentile(95%) = 1.18726 ms, percentile(99%) = 1.42139 ms
[11/20/2026-09:14:44] [I] H2D Latency: min = 0.0563965 ms, max = 0.0915527 ms, mean = 0.0631104 ms, median = 0.0622559 ms, percentile(90%) = 0.0678711 ms, percentile(95%) = 0.0703125 ms, percentile(99%) = 0.0802002 ms
[11/20/2026-09:14:44] [I] GPU Compute Time: min = 3.28711 ms, max = 4.00684 ms, mean = 3.37573 ms, median = 3.35742 ms, percentile(90%) = 3.43555 ms, percentile(95%) = 3.48438 ms, percentile(99%) = 3.79688 ms
[11/20/2026-09:14:44] [I] D2H Latency: min = 0.0371094 ms, max = 0.0610352 ms, mean = 0.0504150 ms, median = 0.0505371 ms, percentile(90%) = 0.0551758 ms, percentile(95%) = 0.0571289 ms, percentile(99%) = 0.0595703 ms
[11/20/2026-09:14:44] [I] Total Host Walltime: 3.00616 s
[11/20/2026-09:14:44] [I] Total GPU Compute Time: 2.90693 s
[11/20/2026-09:14:44] [W] * GPU compute time is unstable, with coefficient of variance = 2.41837%.
[11/20/2026-09:14:44] [W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
[11/20/2026-09:14:44] [I] Explanations of the performance metrics are printed in the verbose logs.
[11/20/2026-09:14:44] [I]
&&&& PASSED TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine --stronglyTyped --timingCacheFile=timing.cache
"""

DESKTOP_11 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110401] # trtexec --onnx=model.fp16.onnx --saveEngine=model.fp16.engine --minShapes=x:1x3x224x224 --optShapes=x:8x3x224x224 --maxShapes=x:32x3x224x224
[11/21/2026-14:02:11] [I] === Performance summary ===
[11/21/2026-14:02:11] [I] Throughput: 1893.5 qps
[11/21/2026-14:02:11] [I] Latency: min = 0.648193 ms, max = 0.880615 ms, mean = 0.662354 ms, median = 0.658447 ms, percentile(90%) = 0.671387 ms, percentile(95%) = 0.677734 ms, percentile(99%) = 0.72168 ms, percentile(99.9%) = 0.83667 ms
[11/21/2026-14:02:11] [I] GPU Compute Time: min = 0.514648 ms, max = 0.734375 ms, mean = 0.525131 ms, median = 0.522217 ms, percentile(90%) = 0.532471 ms, percentile(95%) = 0.537598 ms, percentile(99%) = 0.57959 ms, percentile(99.9%) = 0.694336 ms
[11/21/2026-14:02:11] [I] Total Host Walltime: 3.00132 s
[11/21/2026-14:02:11] [I] Total GPU Compute Time: 2.98437 s
[11/21/2026-14:02:11] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v110401] # trtexec --onnx=model.fp16.onnx --saveEngine=model.fp16.engine
"""

FAILED = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.fp32.onnx --useDLACore=0 --fp16
[11/20/2026-09:20:13] [E] [TRT] ModelImporter.cpp:836: ERROR: ModelImporter.cpp:194 In function parseNode: [6] Invalid Node - uniq0
[11/20/2026-09:20:13] [E] Failed to parse onnx file
[11/20/2026-09:20:13] [E] Parsing model failed
&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=model.fp32.onnx --useDLACore=0 --fp16
"""


def test_jetson_trt10_summary():
    s = parse_trtexec_log(JETSON_10)
    assert s.tensorrt == "10.3.0" and s.status == "PASSED"
    assert s.throughput_qps == pytest.approx(286.412)
    assert s.gpu_compute_ms == {"min": 3.28711, "max": 4.00684, "mean": 3.37573, "median": 3.35742,
                                "p90": 3.43555, "p95": 3.48438, "p99": 3.79688}
    assert set(s.metrics) == {"latency", "enqueue_time", "h2d_latency", "gpu_compute_time", "d2h_latency"}
    assert s.metrics["latency"]["median"] == pytest.approx(3.47021)
    assert s.totals_s == {"host_walltime": pytest.approx(3.00616), "gpu_compute_time": pytest.approx(2.90693)}
    assert s.warnings[0].startswith("* GPU compute time is unstable")
    # The trace lines before the summary are not mistaken for it.
    assert "average" not in " ".join(s.metrics)


def test_desktop_trt11_summary_with_fractional_percentile():
    s = parse_trtexec_log(DESKTOP_11)
    assert s.tensorrt == "11.4.1" and s.status == "PASSED"
    assert s.metrics["latency"]["p99.9"] == pytest.approx(0.83667)
    assert s.gpu_compute_ms["median"] == pytest.approx(0.522217)
    assert s.to_dict()["throughput_qps"] == pytest.approx(1893.5)


def test_failed_run_has_no_figures():
    s = parse_trtexec_log(FAILED)
    assert s.status == "FAILED" and s.tensorrt == "10.3.0"
    assert s.throughput_qps is None and s.metrics == {} and s.totals_s == {}
