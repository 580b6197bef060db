"""Hardware facts of the TensorRT device profiles, and the version rules that depend on them.

The facts live in ``targets/profiles/<name>.yaml`` under ``limits`` (compute capability, DLA cores, memory,
the TensorRT each JetPack ships). The rules here are the ones TensorRT's documentation states:
- TensorRT 11 has no weakly typed builder flags (FP16/INT8) and no implicit INT8 calibration;
- DLA: TensorRT 10.x on Jetson; in 11.x it was absent from 11.0 to 11.4.0 and came back in 11.4.1 on
  Jetson AGX Orin only (JetPack >= 7.2.2); Thor has no DLA;
- TensorRT 10.x cannot put a strongly typed network on DLA, so 10.x DLA builds are weakly typed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from edgec.compiler.errors import ConfigError

BACKEND = "tensorrt"
#: TensorRT 11 brought DLA back in this release (Jetson AGX Orin, JetPack >= 7.2.2).
DLA_RETURNS_IN_11 = (11, 4, 1)
KNOWN_MAJORS = (10, 11)


def parse_version(text: str | tuple[int, ...] | None) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); a suffix ('6.2+b77', '11.4.1-1', '10.16.1.post1') is ignored."""
    if text is None:
        return ()
    if isinstance(text, tuple):
        return text
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What a profile says about its GPU and the TensorRT releases it can run."""

    name: str
    description: str
    gpu_arch: str
    compute_capability: tuple[str, ...]  # empty: any GPU
    dla_cores: int
    memory_gb: float | None
    jetpack: dict[str, str]  # JetPack release -> TensorRT version it ships
    tensorrt_majors: tuple[int, ...]

    @property
    def is_jetson(self) -> bool:
        return bool(self.jetpack)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["tensorrt_majors"] = list(self.tensorrt_majors)
        return d


def device_facts(name: str) -> DeviceFacts:
    """The facts of the TensorRT profile ``name`` (a profile name or alias)."""
    from edgec.targets.registry import backend_profile

    profile = backend_profile(name, BACKEND, "a TensorRT device profile")
    lim = profile.limits
    return DeviceFacts(
        name=profile.name,
        description=profile.description,
        gpu_arch=str(lim.get("gpu_arch", "any")),
        compute_capability=tuple(str(c) for c in lim.get("compute_capability") or ()),
        dla_cores=int(lim.get("dla_cores") or 0),
        memory_gb=lim.get("memory_gb"),
        jetpack={str(k): str(v) for k, v in (lim.get("jetpack") or {}).items()},
        tensorrt_majors=tuple(int(m) for m in lim.get("tensorrt_majors") or KNOWN_MAJORS),
    )


def target_majors(facts: DeviceFacts, requested: str | int) -> tuple[int, ...]:
    """The TensorRT majors a bundle targets: every one the device runs, or the one asked for."""
    if requested in ("auto", None):
        return facts.tensorrt_majors
    major = int(requested)
    if major not in facts.tensorrt_majors:
        raise ConfigError(
            f"{facts.name} does not run TensorRT {major}",
            hint=f"it runs TensorRT {', '.join(map(str, facts.tensorrt_majors))}; set trt_major to one of them or auto",
        )
    return (major,)


def dla_rule(facts: DeviceFacts, trt_version: str | tuple[int, ...]) -> tuple[bool, str]:
    """(allowed, why) for DLA on ``facts``'s device with TensorRT ``trt_version`` (a major alone is allowed)."""
    if facts.dla_cores == 0:
        return False, f"{facts.name} has no DLA cores"
    version = parse_version(trt_version)
    if not version:
        return False, "unknown TensorRT version"
    if version[0] <= 10:
        return True, "TensorRT 10.x on JetPack builds DLA engines (weakly typed FP16/INT8, GPU fallback)"
    if len(version) == 1:
        return True, "TensorRT 11 supports DLA from 11.4.1 (JetPack >= 7.2.2, Jetson AGX Orin)"
    if version < DLA_RETURNS_IN_11:
        return False, f"TensorRT {'.'.join(map(str, version[:3]))} has no DLA support (it returned in 11.4.1)"
    if facts.jetpack and not any(parse_version(v)[:1] == (11,) for v in facts.jetpack.values()):
        return False, f"TensorRT 11 does not support DLA on {facts.name} (Jetson AGX Orin only)"
    return True, "TensorRT >= 11.4.1 builds strongly typed DLA engines (JetPack >= 7.2.2)"


def profiles_with_dla() -> list[str]:
    from edgec.targets.registry import profiles

    return sorted(p.name for p in profiles().values() if p.backend == BACKEND and (p.limits.get("dla_cores") or 0))


def check_dla_request(facts: DeviceFacts, dla_core: int | None, majors: tuple[int, ...]) -> None:
    """Refuse a DLA core the profile cannot have; raise ConfigError naming the profile."""
    if dla_core is None:
        return
    if dla_core < 0:
        raise ConfigError(f"dla_core must be 0 or more, not {dla_core}")
    if facts.dla_cores == 0:
        raise ConfigError(
            f"DLA asked (dla_core={dla_core}) on '{facts.name}', which has no DLA cores",
            hint=f"drop dla_core, or target a profile with DLA: {', '.join(profiles_with_dla())}",
        )
    if dla_core >= facts.dla_cores:
        raise ConfigError(
            f"dla_core={dla_core} on '{facts.name}', which has {facts.dla_cores} DLA core(s)",
            hint=f"use 0..{facts.dla_cores - 1}",
        )
    if not any(dla_rule(facts, (m,))[0] for m in majors):
        raise ConfigError(
            f"DLA asked on '{facts.name}' for TensorRT {', '.join(map(str, majors))}, which cannot use it there",
            hint=dla_rule(facts, (majors[0],))[1],
        )
