"""Gates: budgets on accuracy drop and p50 latency that turn a benchmark into pass/fail."""

from __future__ import annotations

import math
from typing import Any

from edgec.benchmarks.results import BenchResults
from edgec.compiler.errors import ConfigError, GateFailed


def _check_budget(value: float | None, option: str) -> None:
    if value is not None and (not isinstance(value, (int, float)) or math.isnan(value) or value < 0):
        raise ConfigError(f"{option} must be a number of 0 or more, not {value!r}")


def check_gates(
    results: BenchResults, max_accuracy_drop: float | None = None, max_latency_ms: float | None = None, *,
    min_cosine: float | None = None, max_ece_increase: float | None = None, min_iou: float | None = None,
) -> list[str]:
    """The breaches of the budgets, one line each naming the artifact, the figure and the budget.

    Args:
        results: the benchmark to judge.
        max_accuracy_drop: points of accuracy an artifact may lose against the reference (task accuracy when
            labels were given, else 100 - top-1 agreement); None for no gate.
        max_latency_ms: the p50 latency budget in milliseconds; None for no gate.
        min_cosine: the lowest cosine to the reference any output may have.
        max_ece_increase: how much a classification output's expected calibration error may grow (needs labels).
        min_iou: the lowest IoU of a detection (matched boxes) or dense (thresholded maps) output.
    """
    _check_budget(max_accuracy_drop, "max_accuracy_drop")
    _check_budget(max_latency_ms, "max_latency_ms")
    for value, option in ((min_cosine, "min_cosine"), (max_ece_increase, "max_ece_increase"), (min_iou, "min_iou")):
        _check_budget(value, option)
    breaches: list[str] = []
    for run in results.runs:
        breaches += _task_breaches(run, min_cosine, max_ece_increase, min_iou)
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
                basis = {"labels": "task accuracy", "agreement": "100 - top-1 agreement"}.get(
                    acc.drop_basis, acc.drop_basis)
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


def _task_breaches(run: Any, min_cosine: float | None, max_ece_increase: float | None,
                   min_iou: float | None) -> list[str]:
    acc = run.accuracy
    wanted = [g for g in (min_cosine, max_ece_increase, min_iou) if g is not None]
    if not wanted:
        return []
    if acc is None:
        return [f"{run.name}: task gates cannot be checked (no reference outputs to compare with)"]
    found = []
    for name, m in acc.tasks.items():
        figures = m.figures
        cosine = figures.get("mean_cosine", figures.get("cosine"))
        if min_cosine is not None and cosine is not None and cosine < min_cosine:
            found.append(f"{run.name}: output '{name}' cosine {cosine:.4f} is below --min-cosine {min_cosine:g}")
        change = figures.get("ece_change")
        if max_ece_increase is not None and m.task == "classification":
            if change is None:
                found.append(f"{run.name}: output '{name}' ECE cannot be checked without --labels")
            elif change > max_ece_increase:
                found.append(f"{run.name}: output '{name}' ECE grew by {change:.4f} ({figures['reference_ece']:.4f} "
                             f"-> {figures['ece']:.4f}), more than --max-ece-increase {max_ece_increase:g}")
        iou = figures.get("matched_iou", figures.get("iou", figures.get("mean_iou")))
        if min_iou is not None and m.task in ("detection", "dense") and iou is not None and iou < min_iou:
            found.append(f"{run.name}: output '{name}' IoU {iou:.4f} is below --min-iou {min_iou:g}")
    return found


def enforce_gates(
    results: BenchResults, max_accuracy_drop: float | None = None, max_latency_ms: float | None = None, **task_gates: Any
) -> None:
    """Raise GateFailed listing every breach; return quietly when all budgets hold."""
    breaches = check_gates(results, max_accuracy_drop, max_latency_ms, **task_gates)
    if not breaches:
        return
    count = f"{len(breaches)} benchmark gate{'s' if len(breaches) > 1 else ''} failed"
    raise GateFailed(
        count + ":\n" + "\n".join(f"  - {b}" for b in breaches),
        hint="loosen the budget (--max-accuracy-drop, --max-latency-ms, --min-cosine, --max-ece-increase, "
        "--min-iou), or rebuild the failing artifacts "
        "(more calibration samples, another calibration method, a higher precision)",
    )
