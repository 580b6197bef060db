"""Benchmark results as data: one RunResult per artifact, a BenchResults per run, saved as JSON."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from edgec.benchmarks.accuracy import AccuracyReport
from edgec.benchmarks.device import cpu_model
from edgec.benchmarks.latency import LatencyStats
from edgec.compiler.errors import InputFileError

SCHEMA_VERSION = 1


def environment(runtime: str = "") -> dict[str, Any]:
    """Where a run happened: platform, CPU, cores, Python/numpy versions, runtime, hostname."""
    from edgec.compiler.versions import version_of

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": version_of("numpy"),
        "runtime": runtime,
        "hostname": socket.gethostname(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class RunResult:
    """The benchmark of one artifact on its runtime."""

    name: str  # "<target>/<precision>", e.g. "onnxruntime/int8"
    path: str
    format: str
    precision: str
    target: str
    runtime: str
    size_bytes: int
    sha256: str
    threads: int | None
    latency: LatencyStats
    accuracy: AccuracyReport | None = None
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    started_at: str = ""
    is_reference: bool = False  # this artifact is the one the others were compared against
    # Accelerator-side timing when the runtime offers it (TensorRT: CUDA events around the enqueue, and the host
    # time of whole calls with copies), as {"gpu_ms": {...}, "host_ms": {...}, "iterations", "warmup"}.
    device_latency: dict[str, Any] | None = None
    # What the build recorded about this artifact (its manifest metadata, see ``build_records``): the verification
    # verdict and fallback, the latency against FP32 at build time, the confidence temperatures. None when the
    # artifact came with no such records (a single file, an older build, older results).
    build: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["latency"] = self.latency.to_dict()
        d["accuracy"] = self.accuracy.to_dict() if self.accuracy is not None else None
        d["environment"] = dict(self.environment)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["latency"] = LatencyStats.from_dict(d["latency"])
        values["accuracy"] = AccuracyReport.from_dict(d["accuracy"]) if d.get("accuracy") else None
        values["environment"] = dict(d.get("environment") or {})
        return cls(**values)


#: The build-time records of an artifact's metadata that its run carries into the results.
BUILD_RECORDS = ("verification", "latency_check", "confidence")
_VERDICT_KEYS = ("artifact", "data", "samples", "passed", "breaches", "budget")
_HEADLINE_KEYS = ("task", "headline", "value", "drop", "drop_basis")


def build_records(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The records of ``BUILD_RECORDS`` in an artifact's metadata, for ``RunResult.build``; None when it has none.

    A verification verdict keeps its outcome, budget and fallback plan but only the headline figures of each output
    (the bench scores the outputs itself, with their plots); records that are not a verdict ("reference",
    "skipped (--no-verify)") are kept as they are.
    """
    out = {}
    for key in BUILD_RECORDS:
        value = (metadata or {}).get(key)
        if value is not None:
            out[key] = _slim_verdict(value) if key == "verification" else value
    return out or None


def _slim_verdict(record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    slim = {k: record[k] for k in _VERDICT_KEYS if k in record}
    slim["outputs"] = {name: {k: m.get(k) for k in _HEADLINE_KEYS}
                       for name, m in (record.get("outputs") or {}).items() if isinstance(m, dict)}
    if isinstance(record.get("before_fallback"), dict):
        slim["before_fallback"] = _slim_verdict(record["before_fallback"])
    if record.get("fallback"):
        slim["fallback"] = record["fallback"]
    return slim


@dataclasses.dataclass
class BenchResults:
    """All the runs of one benchmark, with what they were measured against and on what data."""

    runs: list[RunResult] = dataclasses.field(default_factory=list)
    reference: str = ""  # e.g. "torch checkpoint model.pt" or "onnxruntime/fp32"
    data_source: str = ""
    samples: int = 0
    created_at: str = dataclasses.field(default_factory=now_iso)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __iter__(self):
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def by_name(self, name: str) -> RunResult:
        for run in self.runs:
            if run.name == name:
                return run
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "reference": self.reference,
            "data_source": self.data_source,
            "samples": self.samples,
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResults:
        return cls(
            runs=[RunResult.from_dict(r) for r in d.get("runs", [])],
            reference=d.get("reference", ""),
            data_source=d.get("data_source", ""),
            samples=int(d.get("samples", 0)),
            created_at=d.get("created_at", ""),
            metadata=dict(d.get("metadata") or {}),
        )

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> BenchResults:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputFileError(
                f"benchmark results '{path}' not found", hint="run: edgec bench ... first"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(
                f"cannot read benchmark results '{path}': {exc}",
                hint="pass a JSON file written by edgec bench",
            ) from None
        if not isinstance(d, dict) or "runs" not in d:
            raise InputFileError(
                f"'{path}' is not a benchmark results file (no 'runs')",
                hint="pass a JSON file written by edgec bench",
            )
        return cls.from_dict(d)
