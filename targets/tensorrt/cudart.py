"""The CUDA runtime through cuda-python (``cuda.bindings.runtime``), behind the few calls edgec needs.

Checked before any TensorRT object exists: without a CUDA device, TensorRT logs error 35 and then segfaults,
while cuda-python's ``cudaGetDeviceCount`` returns the error cleanly (measured with cuda-python 13.4.4).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from edgec.compiler.errors import TargetUnavailableError

#: cuda-python >= 12.6 names the runtime ``cuda.bindings.runtime``; older releases ``cuda.cudart``.
RUNTIME_MODULES = ("cuda.bindings.runtime", "cuda.cudart")
INSTALL_HINT = (
    "pip install 'cuda-python>=12.6' (on Jetson, in a venv made with --system-site-packages so the apt "
    "tensorrt module is visible)"
)


class CudaError(RuntimeError):
    """A CUDA call failed on a machine that has a device: a driver or hardware problem, not a user error."""


def load_runtime() -> Any:
    for name in RUNTIME_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TargetUnavailableError("the TensorRT device half needs cuda-python, which is not installed", hint=INSTALL_HINT)


def _error_name(err: Any) -> str:
    return f"{getattr(err, 'name', err)} ({int(err)})"


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple: the value(s), or CudaError naming the call."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_name(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_count(rt: Any = None) -> tuple[int, str]:
    """(number of CUDA devices, why none) without raising: 0 with the reason when there is no usable device."""
    try:
        rt = rt or load_runtime()
    except TargetUnavailableError as exc:
        return 0, exc.message
    result = rt.cudaGetDeviceCount()
    err, count = result[0], result[1]
    if int(err) != 0:
        return 0, f"cudaGetDeviceCount returned {_error_name(err)}"
    if not count:
        return 0, "cudaGetDeviceCount found no device"
    return int(count), ""


def require_device(purpose: str, rt: Any = None) -> Any:
    """The runtime module, after checking that a CUDA device exists; TargetUnavailableError otherwise."""
    rt = rt or load_runtime()
    count, why = device_count(rt)
    if count == 0:
        raise TargetUnavailableError(
            f"{purpose} needs a CUDA device, and this machine has none ({why})",
            hint="run it on the Jetson or GPU machine the bundle is for; on the build host, `edgec bench` gives "
            "an ONNX Runtime estimate of the bundle instead",
        )
    return rt


def _version(code: int) -> str:
    """CUDA's 12060 -> '12.6'."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def device_info(rt: Any, index: int = 0) -> dict[str, Any]:
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return {
        "gpu_name": str(name),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.totalGlobalMem),
        "cuda_runtime": _version(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
        "cuda_driver": _version(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")),
        "device_index": index,
    }


class DeviceBuffer:
    """Device memory that grows on demand (inputs and outputs change size with dynamic shapes)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.ptr: Any = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> Any:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.nbytes:
            check(self.rt.cudaFree(self.ptr), "cudaFree")
        self.ptr, self.nbytes = 0, 0


def copy_to_device(rt: Any, dst: Any, arr: np.ndarray, stream: Any) -> None:
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(rt.cudaMemcpyAsync(dst, arr, arr.nbytes, kind, stream), "cudaMemcpyAsync (host to device)")


def copy_to_host(rt: Any, arr: np.ndarray, src: Any, stream: Any) -> None:
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(rt.cudaMemcpyAsync(arr, src, arr.nbytes, kind, stream), "cudaMemcpyAsync (device to host)")


class EventTimer:
    """GPU time between two CUDA events recorded on a stream: what the device spent, without host overhead."""

    def __init__(self, rt: Any, stream: Any):
        self.rt = rt
        self.stream = stream
        self.start = check(rt.cudaEventCreate(), "cudaEventCreate")
        self.end = check(rt.cudaEventCreate(), "cudaEventCreate")

    def __enter__(self) -> EventTimer:
        check(self.rt.cudaEventRecord(self.start, self.stream), "cudaEventRecord")
        return self

    def __exit__(self, *exc: Any) -> None:
        check(self.rt.cudaEventRecord(self.end, self.stream), "cudaEventRecord")

    def elapsed_ms(self) -> float:
        check(self.rt.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(check(self.rt.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime"))

    def close(self) -> None:
        for ev in (self.start, self.end):
            check(self.rt.cudaEventDestroy(ev), "cudaEventDestroy")
