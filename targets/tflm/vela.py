"""ethos-u-vela: compile a full-integer .tflite for an Ethos-U NPU and read what it reports.

Vela replaces the ops it can place on the NPU with one ``ethos-u`` custom op per NPU subgraph and leaves the
rest to TFLM on the CPU. It exits 0 even when nothing reaches the NPU (an FP32 model, say), so success is
judged on the NPU op count it prints. Cycles, inference time and memory come from the summary CSV it writes
into its output folder; the CPU ops are read back from the optimised model itself.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from edgec.compiler.errors import TargetBuildError, TargetUnavailableError

DEFAULT_CONFIG = "Arm/vela.ini"  # shipped with vela; names its system configurations and memory modes
KIB = 1024


@dataclasses.dataclass
class VelaReport:
    accelerator: str
    system_config: str
    memory_mode: str
    optimise: str
    npu_ops: int
    cpu_ops: int
    cpu_op_names: list[str]  # builtin names of the ops left to TFLM on the CPU, in model order
    cycles_total: int
    cycles_npu: int
    inference_time_s: float
    inferences_per_second: float
    clock_hz: float
    macs: int
    sram_bytes: int
    dram_bytes: int
    on_chip_flash_bytes: int
    off_chip_flash_bytes: int
    weights_area: str
    feature_map_area: str
    optimised_bytes: int
    optimised: Path = dataclasses.field(repr=False, default=Path())
    summary_csv: Path = dataclasses.field(repr=False, default=Path())

    @property
    def npu_fraction(self) -> float:
        return self.npu_ops / max(1, self.npu_ops + self.cpu_ops)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("optimised")
        d.pop("summary_csv")
        d["npu_fraction"] = round(self.npu_fraction, 4)
        d["inference_time_ms"] = round(self.inference_time_s * 1e3, 6)
        return d


def executable() -> list[str]:
    """The vela command: the console script next to this Python, else on PATH."""
    here = Path(sys.executable).with_name("vela")
    if here.is_file():
        return [str(here)]
    found = shutil.which("vela")
    if found:
        return [found]
    raise TargetUnavailableError(
        "the Ethos-U profiles need the vela compiler (Python package 'ethos-u-vela'), which is not installed",
        hint="pip install 'edgec[mcu]' (or: make install)",
    )


def command(model: Path, out_dir: Path, accelerator: str, system_config: str | None, memory_mode: str | None,
            optimise: str = "Performance", config: str | None = None) -> list[str]:
    cmd = [*executable(), str(model), "--output-dir", str(out_dir), "--accelerator-config", accelerator,
           "--optimise", optimise]
    if config or system_config or memory_mode:
        # vela refuses a config file when it picks its default system configuration itself
        cmd += ["--config", config or DEFAULT_CONFIG]
    if system_config:
        cmd += ["--system-config", system_config]
    if memory_mode:
        cmd += ["--memory-mode", memory_mode]
    return cmd


def compile_model(model: Path, out_dir: Path, accelerator: str, system_config: str | None = None,
                  memory_mode: str | None = None, optimise: str = "Performance",
                  config: str | None = None) -> VelaReport:
    """Run vela on ``model``; the optimised model and the summary CSV land in ``out_dir``."""
    model = Path(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(model, out_dir, accelerator, system_config, memory_mode, optimise, config)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise TargetBuildError(
            f"vela failed on '{model.name}' for {accelerator} (exit {proc.returncode}): {last[:300]}",
            hint="check the vela options of the profile (vela_system_config, vela_memory_mode, vela_config)",
        )
    optimised = out_dir / f"{model.stem}_vela.tflite"
    csvs = sorted(out_dir.glob(f"{model.stem}_summary_*.csv"))
    if not optimised.is_file() or not csvs:
        raise TargetBuildError(f"vela wrote no optimised model or summary for '{model.name}' into '{out_dir}'")
    return report(proc.stdout, csvs[0], optimised, optimise)


def _finite(value: str | None) -> float:
    number = float(value or 0.0)
    return number if math.isfinite(number) else 0.0  # vela writes nan when nothing ran on the NPU


def op_counts(ops: list[str]) -> str:
    """``MAX_POOL_2D, MEAN x2``: each op once, in order, with its count when above one."""
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in Counter(ops).items())


def judge(rep: VelaReport, model_name: str, allow_cpu_fallback: bool) -> None:
    """Raise TargetBuildError when nothing reached the NPU, or when ops fell back to the CPU unasked."""
    if rep.npu_ops == 0:
        floats = " (it is not full-integer INT8: vela places only int8/int16 ops)" if rep.cpu_ops else ""
        raise TargetBuildError(
            f"vela placed none of the {rep.cpu_ops} ops of '{model_name}' on the {rep.accelerator} NPU{floats}",
            hint="build a full-integer INT8 model (--precision int8 --calib PATH), or use a CPU profile "
                 "such as --target cortex-m55",
        )
    if rep.cpu_ops and not allow_cpu_fallback:
        names = op_counts(rep.cpu_op_names)
        raise TargetBuildError(
            f"vela left {rep.cpu_ops} of {rep.npu_ops + rep.cpu_ops} ops of '{model_name}' on the CPU "
            f"({names or 'see vela --show-cpu-operations'}) for {rep.accelerator}",
            hint="they would run as TFLM kernels on the Cortex-M; accept that with target_options: "
                 "{tflm: {allow_cpu_fallback: true}}, or change those layers to ones the NPU supports",
        )


def _count(stdout: str, which: str) -> int:
    m = re.search(rf"^{which} operators = (\d+)", stdout, re.MULTILINE)
    return int(m.group(1)) if m else 0


def report(stdout: str, summary_csv: Path, optimised: Path, optimise: str) -> VelaReport:
    """A VelaReport from vela's printed summary (op counts), its summary CSV and the optimised model."""
    from edgec.targets.tflm.ops import ETHOS_U, model_ops

    with open(summary_csv, newline="") as f:
        row = next(csv.DictReader(f))

    def kib(key: str) -> int:
        return int(round(float(row.get(key) or 0.0) * KIB))

    cpu_names = [op for op in model_ops(optimised) if op != ETHOS_U]
    return VelaReport(
        accelerator=row.get("accelerator_configuration", ""),
        system_config=row.get("system_config", ""),
        memory_mode=row.get("memory_mode", ""),
        optimise=optimise,
        npu_ops=_count(stdout, "NPU"),
        cpu_ops=_count(stdout, "CPU"),
        cpu_op_names=cpu_names,
        cycles_total=int(float(row.get("cycles_total") or 0)),
        cycles_npu=int(float(row.get("cycles_npu") or 0)),
        inference_time_s=float(row.get("inference_time") or 0.0),
        inferences_per_second=_finite(row.get("inferences_per_second")),
        clock_hz=float(row.get("core_clock") or 0.0),
        macs=int(float(row.get("nn_macs") or 0)),
        sram_bytes=kib("sram_memory_used"),
        dram_bytes=kib("dram_memory_used"),
        on_chip_flash_bytes=kib("on_chip_flash_memory_used"),
        off_chip_flash_bytes=kib("off_chip_flash_memory_used"),
        weights_area=row.get("weights_storage_area", ""),
        feature_map_area=row.get("feature_map_storage_area", ""),
        optimised_bytes=optimised.stat().st_size,
        optimised=optimised,
        summary_csv=summary_csv,
    )
