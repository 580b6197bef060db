"""Machine facts in BENCHMARKS.md come from the machine the run used: a faked /proc/cpuinfo, a faked manifest."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.machine import Cpu, int8_build, int8_kernels, others_busy

BENCH = Path(__file__).resolve().parents[2] / "bench"

VNNI_HOST = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Fake 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Fake 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni
"""
AVX2_HOST = """processor\t: 0
model name\t: AMD EPYC Fake 7B12
flags\t\t: fpu sse2 avx avx2 fma
"""
PI_HOST = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def _int8_meta(reduce_range: bool, reason: str) -> dict:
    return {"runtime": "onnxruntime", "flavour": "U8S8", "per_channel": True, "reduce_range": reduce_range,
            "reduce_range_reason": reason}


def _manifest(reduce_range: bool, reason: str) -> dict:
    return {"artifacts": [
        {"precision": "fp32", "metadata": {"runtime": "onnxruntime"}},
        {"precision": "int8", "metadata": {"runtime": "litert", "quantization": "full integer"}},
        {"precision": "int8", "metadata": _int8_meta(reduce_range, reason)},
    ]}


def test_cpu_is_read_through_the_injected_reader():
    cpu = Cpu.read(lambda: VNNI_HOST)
    assert cpu.model == "Intel(R) Xeon(R) Fake 8480+"
    assert cpu.flag_table() == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False}
    assert not cpu.raspberry_pi

    unreadable = Cpu.read(lambda: "")
    assert unreadable.flags is None and set(unreadable.flag_table().values()) == {None}
    assert unreadable.model  # falls back to what the platform module knows

    pi = Cpu.read(lambda: PI_HOST)
    assert pi.raspberry_pi and pi.board == "Raspberry Pi 5 Model B Rev 1.0"


def test_suite_machine_lines_reflect_cpuinfo_and_the_manifest():
    from bench.suite import machine_info, machine_lines

    built = {"digits": SimpleNamespace(build_info={"manifest": _manifest(False, "auto: the build host has VNNI")})}
    lines = "\n".join(machine_lines(machine_info(lambda: VNNI_HOST), built))
    assert "- CPU: Intel(R) Xeon(R) Fake 8480+," in lines
    assert "flags: avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no" in lines
    assert "U8S8, reduce_range=False (auto: the build host has VNNI)" in lines
    assert "EPYC" not in lines

    built = {"digits": SimpleNamespace(build_info={"manifest": _manifest(True, "auto: no VNNI")})}
    lines = "\n".join(machine_lines(machine_info(lambda: AVX2_HOST), built))
    assert "- CPU: AMD EPYC Fake 7B12," in lines and "avx512_vnni no" in lines
    assert "U8S8, reduce_range=True (auto: no VNNI)" in lines

    failed = {"digits": SimpleNamespace(build_info={"manifest": {"artifacts": []}})}
    assert "no INT8 artifact was built in this run" in "\n".join(machine_lines(machine_info(lambda: ""), failed))


def test_int8_kernels_come_from_the_flags_and_the_build_never_a_literal():
    avx2 = Cpu("AMD EPYC", "x86_64", 2, frozenset({"avx2"}))
    vnni = Cpu("Xeon", "x86_64", 8, frozenset({"avx2", "avx512_vnni", "avx_vnni"}))
    arm = Cpu("Cortex-A76", "aarch64", 4, None)
    assert int8_kernels(avx2, _int8_meta(True, "")) == "AVX2 without VNNI: INT8 is U8S8 with reduce_range"
    assert int8_kernels(vnni, _int8_meta(False, "")) == (
        "AVX512-VNNI and AVX-VNNI: INT8 is U8S8 without reduce_range"
    )
    assert int8_kernels(arm, _int8_meta(False, "")) == "aarch64: INT8 is U8S8 without reduce_range"
    assert int8_kernels(avx2, None) == "AVX2 without VNNI: no INT8 build recorded"
    assert int8_build(_manifest(True, "why")) == _int8_meta(True, "why")
    assert int8_build({"artifacts": [{"precision": "fp32", "metadata": {}}]}) is None


def test_litert_host_line_names_a_raspberry_pi_only_on_one():
    from bench.tflite import host

    x86 = host(Cpu.read(lambda: AVX2_HOST))
    assert "(AMD EPYC Fake 7B12), so the ratios are XNNPACK's on this CPU, not a Raspberry Pi's" in x86
    pi = host(Cpu.read(lambda: PI_HOST))
    assert "on this Raspberry Pi 5 Model B Rev 1.0" in pi and "not a Raspberry Pi" not in pi


def test_other_processes_load():
    assert others_busy((100.0, 10.0), (130.0, 20.0), 10.0, 4) == (
        "2.00 of 4 cores busy on average (from /proc/stat, less this process)"
    )
    assert others_busy(None, (1.0, 1.0), 10.0, 4) == "not measured"


def test_every_target_notes_follow_the_recorded_runtimes():
    from bench.targets import runtime_notes

    estimate = "onnxruntime 1.22.0 (CPUExecutionProvider): off-device estimate for TensorRT 10.x, not a TensorRT ..."
    runs = [
        SimpleNamespace(target="onnxruntime", name="cpu/fp32", runtime="onnxruntime 1.22.0 (CPUExecutionProvider)"),
        SimpleNamespace(target="tensorrt", name="jetson-orin-nano/fp16", runtime=estimate),
        SimpleNamespace(target="tflm", name="cortex-m55/int8", runtime="tflite-micro 0.1"),
    ]
    notes = " ".join(runtime_notes(runs))
    assert "jetson-orin-nano/fp16 ran on ONNX Runtime here" in notes and "tflite-micro's host interpreter" in notes
    on_gpu = [SimpleNamespace(target="tensorrt", name="jetson-orin-nano/fp16", runtime="tensorrt 10.3.0 (Orin)")]
    notes = " ".join(runtime_notes(on_gpu))
    assert "ONNX Runtime" not in notes and "jetson-orin-nano/fp16 on tensorrt 10.3.0 (Orin)" in notes


# What a machine looks like when it is written into the prose instead of read: a CPU name, an instruction set,
# a core count, "no GPU", "this (shared) machine".
MACHINE_LITERAL = re.compile(
    r"AVX|VNNI|EPYC|Xeon|Ryzen|\bno GPU\b|\b\d+[- ]cores?\b|this (shared )?machine|U8S8 with", re.IGNORECASE
)


@pytest.mark.parametrize("path", sorted(p.name for p in BENCH.glob("*.py") if p.name != "machine.py"))
def test_bench_prose_states_no_machine_fact_of_its_own(path):
    """Only bench/machine.py names machine facts, and it reads them; the sections print what it reads."""
    tree = ast.parse((BENCH / path).read_text())
    found = [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MACHINE_LITERAL.search(node.value)
    ]
    assert not found, f"{path}: machine facts written as literals: {found}"
