"""Runners for TensorRT artifacts: the engine on the device, or an ONNX Runtime estimate off it.

On the device (a CUDA device, the tensorrt module and ``model.<precision>.engine`` built by ``edgec engine
build``) the engine runs with device buffers through cuda-python. Anywhere else the bundle's ONNX file runs on
ONNX Runtime's CPU provider: the figures are an estimate made off the device, and the runtime says so.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import InputFileError
from edgec.compiler.types import Feeds, InputSpec
from edgec.targets.base import Runner
from edgec.targets.onnxsession import OnnxSessionRunner
from edgec.targets.tensorrt import cudart
from edgec.targets.tensorrt.bundle import sidecar_name


class HostEstimateRunner(OnnxSessionRunner):
    """The bundle's ONNX file on ONNX Runtime (CPU): an off-device estimate of what TensorRT will compute."""

    purpose = "estimating TensorRT artifacts on the host"

    def __init__(self, path: Path, threads: int | None = None, device: str = "", majors: tuple[int, ...] = ()):
        super().__init__(path, threads)
        self.device = device
        self.majors = majors

    def describe(self, version: str) -> str:
        target = f"TensorRT {'/'.join(f'{m}.x' for m in self.majors) or ''}".strip()
        where = f" on {self.device}" if self.device else ""
        return (
            f"onnxruntime {version} (CPUExecutionProvider): off-device estimate for {target}{where}, "
            "not a TensorRT measurement"
        )


class TensorRTRunner(Runner):
    """A serialized engine run with device buffers; refuses an engine built for another GPU or TensorRT."""

    def __init__(self, engine_path: Path, spec: InputSpec, bundle_dir: Path | None = None, device_index: int = 0):
        self.engine_path = Path(engine_path)
        self.spec = spec
        self.bundle_dir = Path(bundle_dir) if bundle_dir else self.engine_path.parent
        self.device_index = device_index
        self.rt: Any = None
        self.trt: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.buffers: dict[str, cudart.DeviceBuffer] = {}

    def load(self) -> None:
        from edgec.targets.tensorrt.engine import check_sidecar, device_fingerprint, load_tensorrt

        self.rt = cudart.require_device("running a TensorRT engine")
        trt = self.trt = load_tensorrt()
        sidecar_path = self.engine_path.with_name(self.engine_path.name + ".json")
        if not sidecar_path.is_file():
            precision = self.engine_path.name.split(".")[1] if self.engine_path.name.count(".") >= 2 else "fp32"
            raise InputFileError(
                f"engine '{self.engine_path}' has no sidecar ({sidecar_name(precision)}), so edgec cannot tell "
                "which device and TensorRT it was built for",
                hint=f"rebuild it: edgec engine build {self.bundle_dir} --precision {precision}",
            )
        sidecar = json.loads(sidecar_path.read_text())
        here = device_fingerprint(trt, self.rt, self.device_index)
        check_sidecar(sidecar, here, self.bundle_dir)
        self.runtime = (
            f"tensorrt {trt.__version__} on {here['gpu_name']} (sm {here['compute_capability']}, CUDA "
            f"{here['cuda_runtime']})" + (f", DLA core {sidecar['dla_core']}" if sidecar.get("dla_core") is not None else "")
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        if sidecar.get("version_compatible"):
            runtime.engine_host_code_allowed = True
        if sidecar.get("dla_core") is not None:
            runtime.DLA_core = int(sidecar["dla_core"])
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise InputFileError(
                f"TensorRT could not load engine '{self.engine_path}'",
                hint=f"rebuild it: edgec engine build {self.bundle_dir} --precision {sidecar.get('precision')}",
            )
        self._runtime_obj = runtime
        self.context = self.engine.create_execution_context()
        self.stream = cudart.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.buffers = {n: cudart.DeviceBuffer(self.rt) for n in self.names}

    def close(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        self.buffers = {}
        if self.stream is not None and self.rt is not None:
            cudart.check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
        self.stream = None
        self.context = None
        self.engine = None

    def input_specs(self) -> InputSpec:
        return self.spec

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def _stage_inputs(self, feeds: Feeds) -> None:
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtype(name))
            self.context.set_input_shape(name, tuple(arr.shape))
            ptr = self.buffers[name].ensure(arr.nbytes)
            cudart.copy_to_device(self.rt, ptr, arr, self.stream)
            self.context.set_tensor_address(name, int(ptr))

    def _bind_outputs(self) -> dict[str, np.ndarray]:
        host = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            arr = np.empty(shape, dtype=self._dtype(name))
            ptr = self.buffers[name].ensure(arr.nbytes)
            self.context.set_tensor_address(name, int(ptr))
            host[name] = arr
        return host

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise cudart.CudaError(f"TensorRT could not enqueue '{self.engine_path.name}'")

    def infer(self, feeds: Feeds) -> dict[str, Any]:
        self._stage_inputs(feeds)
        host = self._bind_outputs()
        self._enqueue()
        for name, arr in host.items():
            cudart.copy_to_host(self.rt, arr, self.buffers[name].ptr, self.stream)
        cudart.check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host

    def time_device(self, feeds: Feeds, warmup: int = 10, iterations: int = 100) -> dict[str, Any]:
        """GPU time of the engine alone (CUDA events around the enqueue, inputs already on the device) and
        host time of a whole ``infer`` (copies included): what ``edgec bench`` reports next to its own timing."""
        self._stage_inputs(feeds)
        self._bind_outputs()
        timer = cudart.EventTimer(self.rt, self.stream)
        try:
            for _ in range(warmup):
                self._enqueue()
            cudart.check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            gpu = []
            for _ in range(iterations):
                with timer:
                    self._enqueue()
                gpu.append(timer.elapsed_ms())
        finally:
            timer.close()
        host = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.infer(feeds)
            host.append((time.perf_counter() - start) * 1e3)
        return {"gpu_ms": summarize(gpu), "host_ms": summarize(host), "iterations": iterations, "warmup": warmup}


def summarize(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    arr = np.asarray(samples)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "std": float(statistics.pstdev(samples)),
    }
