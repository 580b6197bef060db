"""Gates: budgets on accuracy drop and p50 latency that turn a benchmark into pass/fail."""

from __future__ import annotations

import math

from edgec.benchmarks.results import BenchResults
from edgec.compiler.errors import ConfigError, GateFailed


def _check_budget(value: float | None, option: str) -> None:
    if value is not None and (not isinstance(value, (int, float)) or math.isnan(value) or value < 0):
        raise ConfigError(f"{option} must be a number of 0 or more, not {value!r}")


def check_gates(
    results: BenchResults, max_accuracy_drop: float | None = None, max_latency_ms: float | None = None
) -> list[str]:
    """The breaches of the budgets, one line each naming the artifact, the figure and the budget.

    Args:
        results: the benchmark to judge.
        max_accuracy_drop: points of accuracy an artifact may lose against the reference (task accuracy when
            labels were given, else 100 - top-1 agreement); None for no gate.
        max_latency_ms: the p50 latency budget in milliseconds; None for no gate.
    """
    _check_budget(max_accuracy_drop, "max_accuracy_drop")
    _check_budget(max_latency_ms, "max_latency_ms")
    breaches: list[str] = []
    for run in results.runs:
        if max_accuracy_drop is not None:
            acc = run.accuracy
            drop = acc.accuracy_drop if acc is not None else None
            if acc is None:
                breaches.append(
                    f"{run.name}: accuracy drop cannot be checked (no reference outputs to compare with); "
                    f"budget {max_accuracy_drop:g} pts"
                )
            elif drop is None:
                breaches.append(
                    f"{run.name}: accuracy drop cannot be checked (no classification output); "
                    f"budget {max_accuracy_drop:g} pts"
                )
            elif drop > max_accuracy_drop:
                basis = "task accuracy" if acc.drop_basis == "labels" else "100 - top-1 agreement"
                breaches.append(
                    f"{run.name}: accuracy drop {drop:.2f} pts ({basis}) exceeds the budget of "
                    f"{max_accuracy_drop:g} pts"
                )
        if max_latency_ms is not None and run.latency.p50_ms > max_latency_ms:
            breaches.append(
                f"{run.name}: p50 latency {run.latency.p50_ms:.3f} ms exceeds the budget of "
                f"{max_latency_ms:g} ms"
            )
    return breaches


def enforce_gates(
    results: BenchResults, max_accuracy_drop: float | None = None, max_latency_ms: float | None = None
) -> None:
    """Raise GateFailed listing every breach; return quietly when all budgets hold."""
    breaches = check_gates(results, max_accuracy_drop, max_latency_ms)
    if not breaches:
        return
    count = f"{len(breaches)} benchmark gate{'s' if len(breaches) > 1 else ''} failed"
    raise GateFailed(
        count + ":\n" + "\n".join(f"  - {b}" for b in breaches),
        hint="loosen --max-accuracy-drop / --max-latency-ms, or rebuild the failing artifacts "
        "(more calibration samples, another calibration method, a higher precision)",
    )
