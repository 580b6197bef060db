"""The benchmark harness: latency, accuracy against a reference, gates and reports.

Modules: ``latency`` (timing and peak memory), ``accuracy`` (output comparison), ``results`` (RunResult,
BenchResults, JSON), ``gates`` (budgets), ``report`` (tables), ``harness`` (bench_artifacts, load_build).
The names below are imported on first use, so ``import edgec.benchmarks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LatencyStats": "latency",
    "MemorySampler": "latency",
    "measure_latency": "latency",
    "AccuracyReport": "accuracy",
    "OutputMetrics": "accuracy",
    "compare_outputs": "accuracy",
    "BenchResults": "results",
    "RunResult": "results",
    "check_gates": "gates",
    "enforce_gates": "gates",
    "markdown_table": "report",
    "text_table": "report",
    "bench_artifacts": "harness",
    "load_build": "harness",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (the lazily imported names, listed once above)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgec.benchmarks' has no attribute '{name}'")
    return getattr(importlib.import_module(f"edgec.benchmarks.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
