"""Reads trtexec's log: the TensorRT version and the '=== Performance summary ===' figures.

For boards benchmarked with trtexec alone (the bundle README's commands): its summary lines look like
``[I] Latency: min = 1.3 ms, max = 1.5 ms, mean = 1.38 ms, median = 1.38 ms, percentile(90%) = 1.4 ms, ...``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

_PREFIX = r"^(?:\[[^\]]*\]\s*)*"  # "[10/03/2024-10:47:59] [I] "
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([-+\d.eE]+)\s*ms")
_METRIC = re.compile(_PREFIX + r"(Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency|"
                     r"End-to-End Host Latency):\s*(.*)$")
_THROUGHPUT = re.compile(_PREFIX + r"Throughput:\s*([-+\d.eE]+)\s*qps")
_TOTAL = re.compile(_PREFIX + r"Total (Host Walltime|GPU Compute Time):\s*([-+\d.eE]+)\s*s")
_VERSION = re.compile(r"\[TensorRT v(\d+)\]")
_STATUS = re.compile(r"^&&&& (PASSED|FAILED|RUNNING) TensorRT\.trtexec")


@dataclasses.dataclass
class TrtexecSummary:
    tensorrt: str | None = None  # "10.3.0" from "[TensorRT v100300]"
    status: str | None = None  # PASSED / FAILED, from the "&&&&" lines
    throughput_qps: float | None = None
    metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # metric -> {min, p90, ...} ms
    totals_s: dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def gpu_compute_ms(self) -> dict[str, float]:
        return self.metrics.get("gpu_compute_time", {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _version(code: str) -> str:
    """trtexec prints 100300 for 10.3.0 and 110401 for 11.4.1 (major*10000 + minor*100 + patch)."""
    n = int(code)
    return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"


def parse_trtexec_log(text: str) -> TrtexecSummary:
    """The performance summary of a trtexec run; fields stay None when the log lacks them (a failed run)."""
    out = TrtexecSummary()
    in_summary = False
    for raw in text.splitlines():
        line = raw.strip()
        if m := _STATUS.match(line):
            if m.group(1) != "RUNNING":
                out.status = m.group(1)
            if out.tensorrt is None and (v := _VERSION.search(line)):
                out.tensorrt = _version(v.group(1))
            continue
        if "=== Performance summary ===" in line:
            in_summary = True
            continue
        if in_summary and re.match(_PREFIX + r"===", line):
            in_summary = False
        if not in_summary:
            continue
        if m := _THROUGHPUT.match(line):
            out.throughput_qps = float(m.group(1))
        elif m := _METRIC.match(line):
            key = m.group(1).lower().replace("-", "_").replace(" ", "_")
            stats = {}
            for s in _STAT.finditer(m.group(2)):
                pct = s.group(2)
                stats[f"p{float(pct):g}" if pct else s.group(1)] = float(s.group(3))
            out.metrics[key] = stats
        elif m := _TOTAL.match(line):
            out.totals_s[m.group(1).lower().replace(" ", "_")] = float(m.group(2))
        elif "[W]" in line:
            out.warnings.append(line.split("[W]", 1)[1].strip())
    return out
