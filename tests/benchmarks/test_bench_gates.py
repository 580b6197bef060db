"""Gates on accuracy drop and p50 latency."""

from __future__ import annotations

import pytest

from bench_models import make_results
from edgec.benchmarks.gates import check_gates, enforce_gates
from edgec.compiler.errors import ConfigError, GateFailed


def test_no_budgets_no_breaches():
    assert check_gates(make_results()) == []


def test_generous_budgets_pass():
    assert check_gates(make_results(), max_accuracy_drop=25.0, max_latency_ms=3.0) == []
    enforce_gates(make_results(), max_accuracy_drop=25.0, max_latency_ms=3.0)


def test_accuracy_breach_names_artifact_figure_and_budget():
    breaches = check_gates(make_results(), max_accuracy_drop=1.0)
    assert len(breaches) == 1
    assert "onnxruntime/int8" in breaches[0]
    assert "20.00 pts" in breaches[0] and "task accuracy" in breaches[0] and "1 pts" in breaches[0]


def test_agreement_basis_without_labels():
    breaches = check_gates(make_results(with_labels=False), max_accuracy_drop=5.0)
    assert len(breaches) == 1 and "100 - top-1 agreement" in breaches[0]


def test_latency_gate_uses_p50():
    results = make_results()
    # int8: p50 1.15 ms but max 5.0 ms; fp32: p50 2.3 ms
    breaches = check_gates(results, max_latency_ms=2.0)
    assert len(breaches) == 1
    assert breaches[0].startswith("onnxruntime/fp32: p50 latency 2.300 ms") and "2 ms" in breaches[0]


def test_missing_accuracy_is_a_breach_not_a_pass():
    results = make_results()
    results.runs[1].accuracy = None
    breaches = check_gates(results, max_accuracy_drop=50.0)
    assert breaches and "onnxruntime/int8" in breaches[0] and "cannot be checked" in breaches[0]


def test_enforce_raises_with_every_breach_and_a_hint():
    with pytest.raises(GateFailed) as info:
        enforce_gates(make_results(), max_accuracy_drop=1.0, max_latency_ms=1.0)
    err = info.value
    assert "3 benchmark gates failed" in err.message
    assert err.message.count("onnxruntime/") == 3
    assert err.hint and "--max-accuracy-drop" in err.hint
    assert err.exit_code == GateFailed.exit_code


def test_negative_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_latency_ms"):
        check_gates(make_results(), max_latency_ms=-1)
