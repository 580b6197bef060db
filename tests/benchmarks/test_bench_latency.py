"""Latency statistics, the timed loop's modes, and peak-memory sampling."""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import pytest

from bench_models import eval_feeds
from edgec.benchmarks.latency import LatencyStats, MemorySampler, measure_latency, percentile, summarize
from edgec.compiler.errors import CalibrationError, ConfigError
from edgec.compiler.types import InputSpec, TensorSpec
from edgec.targets.base import Runner
from edgec.targets.onnxruntime.runner import OnnxRuntimeRunner


class RecordingRunner(Runner):
    """Sleeps a fixed time per call and remembers what it was fed."""

    runtime = "recording 0"

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = sleep_s
        self.seen: list[int] = []

    def load(self) -> None:
        pass

    def input_specs(self) -> InputSpec:
        return InputSpec((TensorSpec("x", ("N", 1)),))

    def infer(self, feeds):
        self.seen.append(int(feeds["x"][0, 0]))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"y": feeds["x"]}


def numbered_feeds(n: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full((batch, 1), i, np.float32)} for i in range(n)]


def test_summarize_matches_numpy_percentiles():
    values = [float(v) for v in np.random.default_rng(0).exponential(2.0, 257)]
    stats = summarize(values, batch=4)
    assert stats.p50_ms == pytest.approx(np.percentile(values, 50))
    assert stats.p90_ms == pytest.approx(np.percentile(values, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(values, 99))
    assert stats.mean_ms == pytest.approx(np.mean(values))
    assert stats.std_ms == pytest.approx(np.std(values))
    assert stats.min_ms == min(values) and stats.max_ms == max(values)
    assert stats.throughput_per_s == pytest.approx(1000.0 / np.mean(values) * 4)
    assert len(stats.latencies_ms) == 257
    assert stats.latencies_ms[0] == round(values[0], 4)


def test_percentile_of_known_values():
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    assert percentile([3.0], 99) == 3.0


def test_real_runner_iterations_and_ordering(fp32_model):
    feeds = eval_feeds(5, batch=2)
    with OnnxRuntimeRunner(fp32_model, threads=1) as runner:
        stats = measure_latency(runner, feeds, warmup=3, iterations=37)
    assert stats.iterations == 37 and len(stats.latencies_ms) == 37
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.min_ms <= stats.mean_ms <= stats.max_ms
    assert stats.batch == 2 and stats.warmup == 3
    assert stats.throughput_per_s == pytest.approx(2000.0 / stats.mean_ms)


def test_default_is_100_iterations_after_warmup_cycling_feeds():
    runner = RecordingRunner()
    stats = measure_latency(runner, numbered_feeds(3), warmup=4)
    assert stats.iterations == 100
    assert len(runner.seen) == 104
    assert runner.seen[:7] == [0, 1, 2, 0, 0, 1, 2]  # warm-up cycles, then the timed loop starts over


def test_duration_mode_stops_on_budget():
    runner = RecordingRunner(sleep_s=0.01)
    t0 = time.perf_counter()
    stats = measure_latency(runner, numbered_feeds(2), warmup=0, duration=0.15, min_iterations=3)
    elapsed = time.perf_counter() - t0
    assert 3 <= stats.iterations <= 16
    assert elapsed < 1.0
    assert stats.min_ms >= 9.0


def test_duration_mode_runs_at_least_min_iterations():
    runner = RecordingRunner(sleep_s=0.02)
    stats = measure_latency(runner, numbered_feeds(1), warmup=0, duration=0.001, min_iterations=5)
    assert stats.iterations == 5


def test_iterations_cap_the_duration_mode():
    stats = measure_latency(RecordingRunner(), numbered_feeds(1), warmup=0, duration=60.0, iterations=7)
    assert stats.iterations == 7


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"iterations": 0}, ConfigError),
        ({"duration": 0.0}, ConfigError),
        ({"warmup": -1}, ConfigError),
    ],
)
def test_bad_settings_are_config_errors(kwargs, error):
    with pytest.raises(error):
        measure_latency(RecordingRunner(), numbered_feeds(1), **kwargs)


def test_no_feeds_is_a_calibration_error():
    with pytest.raises(CalibrationError):
        measure_latency(RecordingRunner(), [])


def test_stats_dict_round_trip():
    stats = summarize([1.0, 2.5, 3.25], batch=1, warmup=2)
    stats.peak_rss_bytes, stats.peak_rss_delta_bytes = 1000, 10
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_memory_sampler_sees_a_large_allocation():
    pytest.importorskip("psutil")
    # RSS is the whole process's: a garbage collection inside the block (freeing an earlier test's sessions) once
    # took 32 MiB off the delta, so collect first and keep the collector out of the block
    gc.collect()
    gc.disable()
    try:
        with MemorySampler() as mem:
            block = np.ones(128 * 1024 * 1024 // 8)  # 128 MiB, touched
            # the sampling thread needs a turn while the block is alive; on a loaded machine 20 ms was not always one
            deadline = time.monotonic() + 2.0
            while mem.peak_bytes - mem.baseline_bytes < 96 * 1024 * 1024 and time.monotonic() < deadline:
                time.sleep(0.01)
            del block
    finally:
        gc.enable()
    assert mem.available
    assert mem.baseline_bytes > 0
    assert mem.delta_bytes >= 96 * 1024 * 1024


def test_memory_sampler_without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    with MemorySampler() as mem:
        pass
    assert mem.baseline_bytes is None and mem.peak_bytes is None and mem.delta_bytes is None


def test_side_by_side_alternates_and_keeps_ratios():
    import statistics
    import time

    from edgec.benchmarks.latency import side_by_side

    order = []

    def spin(name, us):
        def call(_x):
            order.append(name)
            end = time.perf_counter_ns() + us * 1000
            while time.perf_counter_ns() < end:
                pass
        return call

    times, blocks = side_by_side({"a": spin("a", 200), "b": spin("b", 400)}, {"a": [{}], "b": [{}]},
                                 calls_per_side=60, warmup=1)
    assert blocks >= 2 and len(times["a"]) >= 60 and len(times["b"]) >= 60
    assert 1.5 < statistics.median(times["b"]) / statistics.median(times["a"]) < 3.0
    timed = order[2 * 2:]  # after each side's warm-up and sizing calls
    switches = sum(1 for x, y in zip(timed, timed[1:]) if x != y)
    assert switches >= blocks  # the sides alternate block by block, not one whole run after the other
