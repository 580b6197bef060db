"""The machine a benchmark ran on, read while it ran: every machine fact BENCHMARKS.md states comes from here.

The CPU (model, flags, board) is read from ``/proc/cpuinfo`` through a reader that tests replace; how INT8 was
built is read from the manifest of the run's own build, never assumed from the host.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edgec.targets.onnxruntime.target import int8_isa

#: The x86 flags that decide ONNX Runtime's INT8 kernels (VNNI dot products, or AVX2's saturating u8s8).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")
_MODEL_KEYS = ("model name", "Model", "Hardware")


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo; "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass(frozen=True)
class Cpu:
    """What the run's machine says of its CPU."""

    model: str
    arch: str  # platform.machine()
    cores: int | None
    flags: frozenset[str] | None  # None: no flags line could be read
    board: str = ""  # the "Model" line some ARM boards have, e.g. "Raspberry Pi 5 Model B Rev 1.0"

    @classmethod
    def read(cls, reader: Callable[[], str] = read_cpuinfo) -> Cpu:
        fields: dict[str, str] = {}
        for line in reader().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields:
                fields[key.strip()] = value.strip()
        model = next((fields[k] for k in _MODEL_KEYS if fields.get(k)), "")
        flags = fields.get("flags")
        return cls(
            model=model or platform.processor() or platform.machine() or "unknown",
            arch=platform.machine(),
            cores=os.cpu_count(),
            flags=frozenset(flags.split()) if flags is not None else None,
            board=fields.get("Model", ""),
        )

    def flag_table(self) -> dict[str, bool | None]:
        """Each of CPU_FLAGS: present, absent, or None when the flags could not be read."""
        return {f: None if self.flags is None else f in self.flags for f in CPU_FLAGS}

    @property
    def raspberry_pi(self) -> bool:
        return "Raspberry Pi" in self.board

    def int8_isa(self) -> str:
        """The instructions ONNX Runtime's INT8 kernels can use here, e.g. "AVX2 without VNNI"; off x86, the
        architecture (the build's own wording: ``edgec.targets.onnxruntime.target.int8_isa``)."""
        return int8_isa(self.arch, self.flags)


def int8_build(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metadata of the ONNX Runtime INT8 artifact a build wrote (flavour, reduce_range and why), or None."""
    for artifact in manifest.get("artifacts", ()):
        meta = artifact.get("metadata") or {}
        if artifact.get("precision") == "int8" and meta.get("runtime") == "onnxruntime" and "flavour" in meta:
            return meta
    return None


def int8_kernels(cpu: Cpu, build: Mapping[str, Any] | None) -> str:
    """How INT8 ran here, e.g. "AVX2 without VNNI: INT8 is U8S8 with reduce_range": the CPU's flags and the
    settings the build recorded."""
    if build is None:
        return f"{cpu.int8_isa()}: no INT8 build recorded"
    weights = "with reduce_range" if build.get("reduce_range") else "without reduce_range"
    return f"{cpu.int8_isa()}: INT8 is {build.get('flavour', '?')} {weights}"


def versions(packages: Iterable[str]) -> dict[str, str]:
    """The installed versions of ``packages`` (edgec with its source digest), leaving out those not installed."""
    from edgec.compiler.versions import tool_versions

    wanted = tuple(packages)
    found = tool_versions(wanted)
    return {p: found[p] for p in wanted if p in found}


# ---------------------------------------------------------------------------------------------- the load


def cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the machine (/proc/stat) and of this process and its children; None off Linux."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    return busy, own


def others_busy(
    start: tuple[float, float] | None, end: tuple[float, float] | None, wall_s: float | None, cores: int | None
) -> str:
    """How many cores other processes kept busy on average between two ``cpu_seconds`` readings: the noise in
    the figures."""
    if not (start and end and wall_s):
        return "not measured"
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / wall_s
    return f"{others:.2f} of {cores} cores busy on average (from /proc/stat, less this process)"


#: The ISA classes the bench's latency goals are set for (``goal_isa``).
VNNI, AVX2 = "VNNI", "AVX2"


def goal_isa(isa: str) -> str:
    """The class of a host whose INT8 ISA (``Cpu.int8_isa``) is ``isa`` that latency goals are set for: VNNI,
    AVX2, or ``isa`` itself (no goal set)."""
    if VNNI in isa and "without" not in isa:
        return VNNI
    return AVX2 if isa.startswith(AVX2) else isa
