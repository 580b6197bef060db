"""Hardware facts of the mcu profiles: the core the firmware is compiled for, the memory a model may use, the NPU.

The facts live in ``targets/profiles/<name>.yaml`` under ``limits``:
- ``cpu``, ``fpu``, ``float_abi``: arm-none-eabi-gcc's ``-mcpu``, ``-mfpu``, ``-mfloat-abi`` for the core;
- ``flash_bytes``: what the model (the .tflite array in ``model_data.cc``) may take in flash;
- ``ram_bytes``: what the tensor arena may take in RAM;
- ``npu``: vela's ``--accelerator-config`` (Ethos-U profiles only), with the vela system configuration and
  memory mode of the board (vela's own defaults for that accelerator unless the profile says otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgec.compiler.errors import ConfigError

BACKEND = "tflm"


@dataclasses.dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str
    fpu: str
    float_abi: str
    flash_bytes: int
    ram_bytes: int
    npu: str | None = None
    vela_system_config: str | None = None
    vela_memory_mode: str | None = None
    source: str = ""

    def gcc_flags(self) -> list[str]:
        """Code generation flags for the core (Thumb-2 only: Cortex-M has no Arm state)."""
        flags = [f"-mcpu={self.cpu}", "-mthumb"]
        if self.fpu:
            flags.append(f"-mfpu={self.fpu}")
        if self.float_abi:
            flags.append(f"-mfloat-abi={self.float_abi}")
        return flags

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def board(name: str) -> Board:
    """The facts of the mcu profile ``name`` (a profile name or alias)."""
    from edgec.targets.registry import backend_profile

    profile = backend_profile(name, BACKEND, "an mcu profile", hint="set board to one of")
    lim = profile.limits
    missing = [k for k in ("cpu", "flash_bytes", "ram_bytes") if not lim.get(k)]
    if missing:
        raise ConfigError(f"mcu profile '{profile.name}' lacks limits: {', '.join(missing)}",
                          hint=f"add them under limits: in {profile.name}.yaml")
    return Board(
        name=profile.name,
        description=profile.description,
        cpu=str(lim["cpu"]),
        fpu=str(lim.get("fpu") or ""),
        float_abi=str(lim.get("float_abi") or ""),
        flash_bytes=int(lim["flash_bytes"]),
        ram_bytes=int(lim["ram_bytes"]),
        npu=lim.get("npu"),
        vela_system_config=lim.get("vela_system_config"),
        vela_memory_mode=lim.get("vela_memory_mode"),
        source=str(lim.get("source", "")),
    )
