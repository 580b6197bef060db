"""Fakes of the device libraries for hardware-free tests: tensorrt modules shaped like 10.x and 11.x, and
cuda-python's runtime (``cuda.bindings.runtime``).

The fakes keep the real APIs' names and signatures (Builder, create_network, OnnxParser, IBuilderConfig,
timing cache, optimization profile, Runtime, ICudaEngine, IExecutionContext; cudaMalloc/cudaMemcpyAsync/events).
The 11.x fake has no BuilderFlag.FP16/INT8 (removed in 11), so any use of them fails the test.
"""

from __future__ import annotations

import enum
import importlib.machinery
import itertools
import json
import types
from types import SimpleNamespace

import numpy as np
import onnx

# ---------------------------------------------------------------------------------------------- fake CUDA


class CudaErr(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35


def make_cudart(devices: int = 1, name: bytes = b"Orin", cc=(8, 7)) -> types.ModuleType:
    """cuda.bindings.runtime: (error, value) tuples, device memory as bytearrays behind integer pointers."""
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = CudaErr.cudaSuccess
    rt.cudaError_t = CudaErr
    rt.memory = {}
    rt.calls = []
    counter = itertools.count(0x1000, 0x1000)
    clock = itertools.count(0, 1)

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    rt.cudaMemcpyKind = cudaMemcpyKind

    def get_count():
        rt.calls.append("cudaGetDeviceCount")
        return (CudaErr.cudaErrorInsufficientDriver, 0) if devices == 0 else (ok, devices)

    rt.cudaGetDeviceCount = get_count
    rt.cudaGetDeviceProperties = lambda i: (ok, SimpleNamespace(name=name + b"\0" * 8, major=cc[0], minor=cc[1],
                                                              totalGlobalMem=8 << 30))
    rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
    rt.cudaDriverGetVersion = lambda: (ok, 12060)

    def malloc(n):
        ptr = next(counter)
        rt.memory[ptr] = bytearray(n)
        return ok, ptr

    def free(ptr):
        del rt.memory[ptr]
        return (ok,)

    def memcpy(dst, src, n, kind, stream):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            rt.memory[dst][:n] = np.ascontiguousarray(src).view(np.uint8).ravel()[:n].tobytes()
        else:
            dst.view(np.uint8).ravel()[:n] = np.frombuffer(bytes(rt.memory[src][:n]), np.uint8)
        return (ok,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = malloc, free, memcpy
    rt.cudaStreamCreate = lambda: (ok, 7)
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaEventCreate = lambda: (ok, SimpleNamespace(t=0))

    def record(ev, stream):
        ev.t = next(clock)
        return (ok,)

    rt.cudaEventRecord = record
    rt.cudaEventSynchronize = lambda ev: (ok,)
    rt.cudaEventElapsedTime = lambda a, b: (ok, 0.25 * (b.t - a.t))
    rt.cudaEventDestroy = lambda ev: (ok,)
    return rt


# ----------------------------------------------------------------------------------------- fake TensorRT


def make_tensorrt(version: str, *, dla_cores: int = 0, memory: dict | None = None) -> types.ModuleType:
    """A tensorrt module shaped like 10.x or 11.x. 11.x lacks the weakly typed flags, as the real one does."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.log = SimpleNamespace(builders=0, runtimes=0, networks=[], configs=[], parsers=[])

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    for s in Severity:
        setattr(ILogger, s.name, s)

    class Logger(ILogger):
        def __init__(self, min_severity=Severity.WARNING):
            self.min_severity = min_severity

        def log(self, severity, msg):
            pass

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    flags = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "VERSION_COMPATIBLE",
             "EXCLUDE_LEAN_RUNTIME", "EDITABLE_TIMING_CACHE"]
    if major <= 10:
        flags += ["FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32"])
    release = tuple(int(v) for v in version.split(".")[:2])
    parser_flags = ["NATIVE_INSTANCENORM"] + (["ADJUST_FOR_DLA"] if release >= (10, 16) else [])
    trt.OnnxParserFlag = enum.IntEnum("OnnxParserFlag", parser_flags)
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[dt]

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self):
            return b"timing-cache:" + version.encode()

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # the real keyword names
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class BuilderConfig:
        def __init__(self):
            self.flags = set()
            self.profiles = []
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.cache = None
            trt.log.configs.append(self)

        def set_flag(self, flag):
            assert isinstance(flag, trt.BuilderFlag)
            self.flags.add(flag.name)

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data and not cache.data.endswith(version.encode()):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs = [], []
            trt.log.networks.append(self)

    class ParserError:
        def __init__(self, node, op, desc):
            self._node, self._op, self._desc = node, op, desc

        def node_name(self):
            return self._node

        def node_operator(self):
            return self._op

        def desc(self):
            return self._desc

        def code(self):
            return "UNSUPPORTED_NODE"

    class OnnxParser:
        rejects = {"Unique", "Det"}

        def __init__(self, network, logger):
            self.network, self.errors, self.flags = network, [], set()
            trt.log.parsers.append(self)

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def parse_from_file(self, path):
            model = onnx.load(path)
            self.errors = [ParserError(n.name, n.op_type, f"{n.op_type} is not supported") for n in model.graph.node
                           if n.op_type in self.rejects]
            self.network.inputs = [i.name for i in model.graph.input]
            self.network.outputs = [(o.name, o.type.tensor_type.shape.dim[-1].dim_value) for o in model.graph.output]
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Builder:
        def __init__(self, logger):
            trt.log.builders += 1
            self.num_DLA_cores = dla_cores

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            return json.dumps({"inputs": network.inputs, "outputs": network.outputs}).encode()

    class Context:
        """Computes y[n, :] = sum(x[n]) in fake device memory, so a run proves the copies both ways."""

        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            batch = next(iter(self.shapes.values()))[0]
            return (batch, dict(self.engine.plan["outputs"])[name])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            (x_name,) = self.engine.plan["inputs"]
            shape = self.shapes[x_name]
            n = int(np.prod(shape)) * 4
            x = np.frombuffer(bytes(memory[self.addresses[x_name]][:n]), np.float32).reshape(shape)
            for name, width in self.engine.plan["outputs"]:
                y = np.repeat(x.reshape(shape[0], -1).sum(1, keepdims=True), width, axis=1).astype(np.float32)
                memory[self.addresses[name]][: y.nbytes] = y.tobytes()
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.names = plan["inputs"] + [o for o, _ in plan["outputs"]]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.plan["inputs"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            trt.log.runtimes += 1
            self.engine_host_code_allowed = False
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
