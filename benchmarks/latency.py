"""Latency of a Runner: warm-up, a timed loop (N iterations or a time budget), and peak memory sampling."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

# The timing loop and the memory sampler live in device.py, which runs on devices without edgec installed.
from edgec.benchmarks.device import MemorySampler, timed_loop
from edgec.compiler.errors import CalibrationError, ConfigError
from edgec.compiler.types import Feeds

__all__ = ["LatencyStats", "MemorySampler", "batch_size", "measure_latency", "percentile", "side_by_side", "summarize"]
from edgec.targets.base import Runner

DEFAULT_ITERATIONS = 100


@dataclasses.dataclass
class LatencyStats:
    """Timings of one artifact, in milliseconds; memory fields are None when psutil is missing."""

    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_per_s: float
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    batch: int = 1
    warmup: int = 0
    peak_rss_bytes: int | None = None
    peak_rss_delta_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["latencies_ms"] = [float(x) for x in values.get("latencies_ms", [])]
        return cls(**values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(latencies_ms: Sequence[float], batch: int = 1, warmup: int = 0) -> LatencyStats:
    """LatencyStats from per-iteration latencies in milliseconds."""
    if not latencies_ms:
        raise ValueError("no latencies to summarize")
    ordered = sorted(latencies_ms)
    mean = statistics.fmean(ordered)
    return LatencyStats(
        iterations=len(ordered),
        p50_ms=percentile(ordered, 50),
        p90_ms=percentile(ordered, 90),
        p99_ms=percentile(ordered, 99),
        mean_ms=mean,
        std_ms=statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
        min_ms=ordered[0],
        max_ms=ordered[-1],
        # a zero mean (a clock too coarse for the call) would give inf, which JSON cannot hold
        throughput_per_s=1000.0 / mean * batch if mean > 0 else 0.0,
        latencies_ms=[round(float(x), 4) for x in latencies_ms],
        batch=batch,
        warmup=warmup,
    )


def timed_call(runner: Any) -> Any:
    """What the clock goes around: ``runner.call`` (the runtime alone), or ``infer`` for a runner without one."""
    return getattr(runner, "call", None) or runner.infer


def batch_size(feeds: Feeds) -> int:
    """The leading dimension of the first input (1 for scalars or empty feeds)."""
    for value in feeds.values():
        shape = getattr(value, "shape", ())
        return int(shape[0]) if len(shape) >= 1 else 1
    return 1


def measure_latency(
    runner: Runner,
    feeds_list: list[Feeds],
    *,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    min_iterations: int = 10,
) -> LatencyStats:
    """Time ``runner.call`` (the runtime's own call; ``infer`` unless the runner says otherwise) over
    ``feeds_list`` (cycled), after ``warmup`` untimed calls.

    Args:
        runner: a loaded Runner.
        feeds_list: the inputs to cycle through.
        warmup: untimed calls before timing.
        iterations: timed calls; the default is 100 when ``duration`` is not given either. With ``duration``,
            a cap on the number of calls.
        duration: a time budget in seconds for the timed loop; the loop runs at least ``min_iterations``.
        min_iterations: the floor of the duration mode.
    """
    if not feeds_list:
        raise CalibrationError("no inputs to time the model with", hint="give at least one evaluation sample")
    if warmup < 0:
        raise ConfigError(f"warmup must be 0 or more, not {warmup}")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"iterations must be at least 1, not {iterations}")
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration must be positive, not {duration} s")
    if min_iterations < 1:
        raise ConfigError(f"min_iterations must be at least 1, not {min_iterations}")
    if iterations is None and duration is None:
        iterations = DEFAULT_ITERATIONS

    latencies = timed_loop(
        timed_call(runner), feeds_list, warmup=warmup, iterations=iterations, duration=duration,
        min_iterations=min_iterations,
    )
    return summarize(latencies, batch=batch_size(feeds_list[0]), warmup=warmup)


def side_by_side(calls: dict[str, Any], feeds: dict[str, list[Feeds]], budget_s: float = 0.6,
                 block_s: float = 0.002, calls_per_side: int | None = None,
                 warmup: int = 3) -> tuple[dict[str, list[float]], int]:
    """Per-call milliseconds of each of ``calls`` (name -> the runtime's call), timed in alternating blocks of
    about ``block_s`` each, cycling through ``feeds[name]``: within ``budget_s`` seconds in all, or until each
    has made about ``calls_per_side`` timed calls. Returns the times and the number of blocks a side.

    Alternating blocks of a few milliseconds compare the calls in the same machine state (a shared machine
    switches between fast and slow states every second or so; whole runs one after another would compare those).
    """
    import time

    clock = time.perf_counter_ns
    names = list(calls)
    per_call = {}
    for name in names:  # warm up, and size the blocks
        for i in range(max(1, warmup)):
            calls[name](feeds[name][i % len(feeds[name])])
        t0 = clock()
        calls[name](feeds[name][0])
        per_call[name] = max((clock() - t0) / 1e9, 1e-7)
    sizes = {n: max(1, min(50, round(block_s / per_call[n]))) for n in names}
    if calls_per_side is not None:
        blocks = max(2, -(-calls_per_side // min(sizes.values())))
        sizes = {n: max(1, -(-calls_per_side // blocks)) for n in names}
    else:
        blocks = max(6, min(500, int(budget_s / sum(sizes[n] * per_call[n] for n in names))))
    times: dict[str, list[float]] = {n: [] for n in names}
    for block in range(blocks):
        for name in (names if block % 2 == 0 else names[::-1]):
            call, xs = calls[name], feeds[name]
            for k in range(sizes[name]):
                x = xs[(block * sizes[name] + k) % len(xs)]
                t0 = clock()
                call(x)
                times[name].append((clock() - t0) / 1e6)
    return times, blocks
