"""The device runner: runs a build's artifacts on the machine it is started on and writes what it measured.

    python -m edgec.benchmarks.device BUILD --data DATA.npz [--labels L.npy] [--artifact NAME] [--warmup N]
        [--iterations N | --duration S] [--threads N] --json OUT.json [--outputs OUT.npz]

This file is also shipped on its own to a device by ``edgec bench --remote`` (see ``remote.py``), so it imports
only the standard library, numpy and the artifact's runtime, and keeps to Python 3.10 syntax (JetPack 6 ships
3.10). The host turns the JSON back into ``BenchResults``: it summarises the raw latencies with
``latency.summarize`` and computes accuracy from the outputs written to ``--outputs`` against its own reference,
so the device never needs the reference model.

``DATA.npz`` holds one array per model input, samples along the first axis; each sample is fed with a leading
batch axis of ``__batch__`` rows (an optional int array in the file, default 1). Exit codes: 0 success, 2 bad
usage, 3 an unreadable build or data file, 5 a runtime (or numpy) missing on this machine.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import importlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

#: Written by ``--json``; the host refuses a file with another schema.
SCHEMA = "edgec-device-run/1"
MANIFEST = "manifest.json"
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_UNAVAILABLE = 5
#: Packages whose presence would mean the runner pulled in more than it should; recorded in the JSON.
HEAVY_MODULES = ("torch", "onnx", "click", "yaml", "edgec.compiler", "tensorflow")


class DeviceRunError(Exception):
    """A problem the user fixes on the device; ``main`` prints it in one line and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory: shared with latency.py, which re-exports them.


def timed_loop(
    call: Callable[[Any], Any],
    feeds_list: list,
    *,
    warmup: int,
    iterations: int | None,
    duration: float | None,
    min_iterations: int = 10,
) -> list[float]:
    """Per-call latencies in ms of ``call(feeds)`` over ``feeds_list`` (cycled), after ``warmup`` untimed calls.

    Stops after ``iterations`` calls, or once ``duration`` seconds have passed and at least ``min_iterations``
    calls ran; one of the two must be given. Only the call itself is inside the clock.
    """
    n = len(feeds_list)
    for i in range(warmup):
        call(feeds_list[i % n])
    clock = time.perf_counter_ns
    latencies: list[float] = []
    budget_ns = int(duration * 1e9) if duration is not None else None
    start = clock()
    i = 0
    while True:
        if iterations is not None and i >= iterations:
            break
        if budget_ns is not None and i >= min_iterations and clock() - start >= budget_ns:
            break
        feeds = feeds_list[i % n]
        t0 = clock()
        call(feeds)
        latencies.append((clock() - t0) / 1e6)
        i += 1
    return latencies


class MemorySampler:
    """Samples this process's resident memory (RSS) on a daemon thread while the ``with`` block runs.

    ``baseline_bytes`` is the RSS on entering, ``peak_bytes`` the highest sample (entry and exit included).
    Both stay None when psutil is not installed.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self._process: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._process is not None

    @property
    def delta_bytes(self) -> int | None:
        if self.baseline_bytes is None or self.peak_bytes is None:
            return None
        return self.peak_bytes - self.baseline_bytes

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _sample(self) -> None:
        rss = self._rss()
        if self.peak_bytes is None or rss > self.peak_bytes:
            self.peak_bytes = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        try:
            import psutil
        except ImportError:
            return self
        self._process = psutil.Process()
        self.baseline_bytes = self._rss()
        self.peak_bytes = self.baseline_bytes
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edgec-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()


# ---------------------------------------------------------------------------------------------------------------
# The machine: shared with results.py, which re-exports cpu_model.


_CPU_MODEL: list[str] = []


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what the platform module knows."""
    if _CPU_MODEL:
        return _CPU_MODEL[0]
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    name = value.strip()
                    break
    except OSError:
        pass
    _CPU_MODEL.append(name or platform.processor() or platform.machine() or "unknown")
    return _CPU_MODEL[0]


def package_version(name: str) -> str:
    """An installed distribution's version without importing it; "" when not installed."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}".strip()


def thermal_celsius() -> dict[str, float]:
    """Readable thermal zones (/sys/class/thermal) as {zone type: degrees C}; empty where there are none."""
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        try:
            with open(os.path.join(zone, "temp"), encoding="utf-8") as f:
                milli = int(f.read().strip())
            with open(os.path.join(zone, "type"), encoding="utf-8") as f:
                kind = f.read().strip() or os.path.basename(zone)
        except (OSError, ValueError):
            continue
        key = kind if kind not in temps else f"{kind}.{os.path.basename(zone)}"
        temps[key] = milli / 1000.0
    return temps


def _tool_output(argv: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a device tool (nvpmodel, jetson_clocks), None when absent; never fails the run."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    text = (done.stdout or "").strip()
    if done.returncode != 0:
        text = f"{text}\n(exit {done.returncode}: {(done.stderr or '').strip()})".strip()
    return text


def jetson_state() -> dict[str, Any] | None:
    """Power mode and clocks on an NVIDIA Jetson (L4T), None elsewhere."""
    release = None
    try:
        with open("/etc/nv_tegra_release", encoding="utf-8") as f:
            release = f.readline().strip()
    except OSError:
        pass
    if release is None and shutil.which("nvpmodel") is None:
        return None
    model = None
    try:
        with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as f:
            model = f.read().strip("\x00\n ")
    except OSError:
        pass
    return {
        "l4t_release": release,
        "model": model,
        "power_mode": _tool_output(["nvpmodel", "-q"]),
        # jetson_clocks --show needs root; without it the text says so, which is still worth recording
        "clocks": _tool_output(["jetson_clocks", "--show"]),
    }


def device_environment(runtimes: dict[str, str] | None = None) -> dict[str, Any]:
    """Where a run happened: OS, CPU, cores, Python, numpy and runtime versions, Jetson state, temperatures."""
    env: dict[str, Any] = {
        "platform": platform.platform(),
        "os": _os_name(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": package_version("numpy"),
        "runtimes": dict(runtimes or {}),
        "hostname": socket.gethostname(),
    }
    jetson = jetson_state()
    if jetson is not None:
        env["jetson"] = jetson
    return env


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------------
# Runtimes: one small class per artifact format, picked from a static table.


def _import_first(candidates: list[tuple[str, str]], what: str) -> tuple[Any, str]:
    """The first importable (module, distribution) of ``candidates``, with its name and version."""
    for module, dist in candidates:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        version = package_version(dist) or getattr(mod, "__version__", "")
        return mod, f"{dist} {version}".strip()
    names = " or ".join(dist for _, dist in candidates)
    raise DeviceRunError(
        f"running {what} needs {names}, which is not installed for {sys.executable}; "
        f"install it on the device (pip install {candidates[0][1]}) or use another Python",
        EXIT_UNAVAILABLE,
    )


class OnnxSession:
    """ONNX Runtime on the CPU, with the host harness's session settings (see compiler/onnxutil.ort_session)."""

    def __init__(self, path: str, threads: int):
        ort, self.runtime = _import_first([("onnxruntime", "onnxruntime")], "ONNX artifacts")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self.runtime += " (CPUExecutionProvider)"
        self.inputs = [(i.name, _ORT_DTYPES.get(i.type, "")) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, feeds: dict[str, Any]) -> list[Any]:
        return self.session.run(self.outputs, feeds)


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

#: LiteRT's successors first: ai-edge-litert, then the older tflite-runtime, then full TensorFlow.
_TFLITE_RUNTIMES = [
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
]


class TFLiteSession:
    """A .tflite file on the first LiteRT/TFLite interpreter installed.

    With the artifact's ``io`` metadata (what edgec's tflite target records), it takes float feeds laid out like
    the model's spec (NCHW images) under the spec's names, and gives float outputs in the spec's layout: it
    transposes to the file's layout (NHWC), quantizes int8 inputs with the recorded scale and zero point, and
    dequantizes int8 outputs, as the host runner does.
    """

    def __init__(self, path: str, threads: int, io: dict[str, Any] | None = None):
        import numpy as np

        self._np = np
        mod, self.runtime = _import_first(_TFLITE_RUNTIMES, "TFLite artifacts")
        interpreter_cls = mod.Interpreter
        self.interpreter = interpreter_cls(model_path=path, num_threads=threads or None)
        self.interpreter.allocate_tensors()
        ins = self.interpreter.get_input_details()
        outs = self.interpreter.get_output_details()
        self._in_index = {d["name"]: d["index"] for d in ins}
        self._in_shape = {d["name"]: tuple(d["shape"]) for d in ins}
        self._out_index = [d["index"] for d in outs]
        self.io = io if io and io.get("inputs") and io.get("outputs") else None
        if self.io is None:
            self.inputs = [(d["name"], str(getattr(d["dtype"], "__name__", d["dtype"]))) for d in ins]
            self.outputs = [d["name"] for d in outs]
        else:
            # the spec's names and float dtypes: the quantization happens here, after adapt_feeds
            self.inputs = [
                (t["name"], "float32" if t.get("scale") is not None else t.get("dtype", "float32"))
                for t in self.io["inputs"]
            ]
            self.outputs = [t["name"] for t in self.io["outputs"]]
            by_name = {d["name"]: d["index"] for d in outs}
            self._out_index = [by_name.get(t.get("tflite_name"), idx)
                               for t, idx in zip(self.io["outputs"], self._out_index)]

    def _set(self, name: str, value: Any) -> None:
        index = self._in_index[name]
        if self._in_shape[name] != value.shape:
            self.interpreter.resize_tensor_input(index, value.shape)
            self.interpreter.allocate_tensors()
            self._in_shape[name] = value.shape
        self.interpreter.set_tensor(index, value)

    def infer(self, feeds: dict[str, Any]) -> list[Any]:
        if self.io is None:
            for name, value in feeds.items():
                self._set(name, value)
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(i) for i in self._out_index]
        np = self._np
        names = list(self._in_index)
        for k, t in enumerate(self.io["inputs"]):
            arr = np.asarray(feeds[t["name"]])
            if t.get("transpose"):
                arr = arr.transpose(t["transpose"])
            if t.get("scale") is not None:
                info = np.iinfo(t["dtype"])
                arr = np.clip(np.round(arr / t["scale"]) + t["zero_point"], info.min, info.max)
            arr = np.ascontiguousarray(arr.astype(t["dtype"]))
            self._set(t.get("tflite_name") if t.get("tflite_name") in self._in_index else names[k], arr)
        self.interpreter.invoke()
        out = []
        for t, index in zip(self.io["outputs"], self._out_index):
            arr = self.interpreter.get_tensor(index)
            if t.get("scale") is not None:
                arr = (arr.astype(np.float32) - t["zero_point"]) * np.float32(t["scale"])
            if t.get("transpose"):
                arr = np.ascontiguousarray(arr.transpose(t["transpose"]))
            out.append(arr)
        return out


class PteSession:
    """A .pte file (an ExecuTorch program) in ExecuTorch's Python runtime, ``executorch.runtime``.

    ExecuTorch's Python bindings are built against libtorch and import torch themselves: on a device this
    needs ``pip install executorch torch`` besides numpy (the C++ runtime needs neither, but has no Python API).
    The program keeps the spec's layout and float32 I/O at every precision; a batch of several rows runs one
    row at a time when the program's batch is 1 (the artifact's ``io`` record has its shapes).
    """

    def __init__(self, path: str, threads: int, io: dict[str, Any] | None = None):
        import numpy as np

        self._np = np
        mod, runtime = _import_first([("executorch.runtime", "executorch")], ".pte artifacts")
        self.runtime = f"{runtime} (XNNPACK)"
        self._torch = sys.modules["torch"]  # imported by the runtime, which takes and gives torch tensors
        if threads:
            from executorch.extension.pybindings import portable_lib

            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
        self._program = mod.Runtime.get().load_program(path)
        self.method = self._program.load_method("forward")
        meta = self.method.metadata
        if io and io.get("inputs") and io.get("outputs"):
            self.inputs = [(t["name"], t["dtype"]) for t in io["inputs"]]
            self._shapes = [tuple(t["shape"]) for t in io["inputs"]]
            self.outputs = [t["name"] for t in io["outputs"]]
        else:
            infos = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
            self.inputs = [(f"input_{i}", "") for i in range(len(infos))]
            self._shapes = [tuple(info.sizes()) for info in infos]
            self.outputs = [f"output_{i}" for i in range(meta.num_outputs())]

    def _run(self, arrays: list[Any]) -> list[Any]:
        tensors = [self._torch.from_numpy(self._np.ascontiguousarray(a)) for a in arrays]
        return [o.numpy() for o in self.method.execute(tensors)]

    def infer(self, feeds: dict[str, Any]) -> list[Any]:
        np = self._np
        arrays = [np.asarray(feeds[name]) if name in feeds else np.asarray(list(feeds.values())[k])
                  for k, (name, _) in enumerate(self.inputs)]
        arrays = [a.astype(dtype) if dtype and a.dtype.name != dtype else a
                  for a, (_, dtype) in zip(arrays, self.inputs)]
        if all(tuple(a.shape) == shape for a, shape in zip(arrays, self._shapes)):
            return self._run(arrays)
        rows = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        if not all(shape[:1] == (1,) and a.ndim == len(shape) and tuple(a.shape[1:]) == shape[1:]
                   and a.shape[0] == rows for a, shape in zip(arrays, self._shapes)):
            want = ", ".join("x".join(map(str, s)) for s in self._shapes)
            got = ", ".join("x".join(map(str, a.shape)) for a in arrays)
            raise DeviceRunError(f"the .pte takes inputs {want}, not {got}")
        per_row = [self._run([a[i:i + 1] for a in arrays]) for i in range(rows)]
        return [np.concatenate([r[k] for r in per_row]) for k in range(len(self.outputs))]


#: Artifact format -> the session class that runs it here.
SESSIONS: dict[str, Any] = {"onnx": OnnxSession, "tflite": TFLiteSession, "pte": PteSession}
#: Targets whose artifacts share a format with a runtime above but need their own (TensorRT builds its engine).
UNSUPPORTED_TARGETS = {
    "tensorrt": "needs TensorRT on the device, which the device runner does not drive yet",
    "tflm": "runs on the microcontroller itself (flash its firmware/ sources); edgec bench runs it on the host "
            "with tflite-micro",
}


# ---------------------------------------------------------------------------------------------------------------
# The build and the data.


def artifact_name(entry: dict[str, Any]) -> str:
    """``<profile>/<precision>``, as ``Artifact.name`` spells it."""
    return f"{(entry.get('metadata') or {}).get('profile', entry['target'])}/{entry['precision']}"


def read_manifest(build: str) -> list[dict[str, Any]]:
    """The artifact entries of a build folder's manifest, each with an absolute ``file``."""
    if os.path.isfile(build) and os.path.basename(build) == MANIFEST:
        build = os.path.dirname(build) or "."
    path = os.path.join(build, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DeviceRunError(f"'{build}' has no {MANIFEST}; pass a build folder written by edgec build") from None
    except (OSError, ValueError) as exc:
        raise DeviceRunError(f"cannot read '{path}': {exc}") from None
    entries = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise DeviceRunError(f"'{path}' lists no artifacts")
    out = []
    for entry in entries:
        try:
            entry = dict(entry, file=os.path.join(build, entry["path"]), name=artifact_name(entry))
        except (KeyError, TypeError) as exc:
            raise DeviceRunError(f"'{path}' has an unreadable artifact entry ({exc})") from None
        out.append(entry)
    return out


def read_data(path: str, np: Any) -> tuple[list[dict[str, Any]], int]:
    """Samples ({input: array with a batch axis}) from an .npz, and the rows per sample."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DeviceRunError(f"data file '{path}' not found") from None
    except (OSError, ValueError) as exc:
        raise DeviceRunError(f"cannot read data file '{path}': {exc}; pass an .npz of input arrays") from None
    batch = int(arrays.pop("__batch__", 1))
    if not arrays:
        raise DeviceRunError(f"data file '{path}' holds no input arrays")
    counts = {k: v.shape[0] // batch if v.ndim else 0 for k, v in arrays.items()}
    n = min(counts.values())
    if n < 1 or len(set(counts.values())) != 1:
        raise DeviceRunError(f"data file '{path}': inputs hold different or zero sample counts {counts}")
    samples = [{k: v[i * batch:(i + 1) * batch] for k, v in arrays.items()} for i in range(n)]
    return samples, batch


def adapt_feeds(
    feeds: dict[str, Any], wanted: list[tuple[str, str]], layouts: dict[str, str], data_layouts: dict[str, str],
    np: Any,
) -> dict[str, Any]:
    """Feeds fitted to a session's inputs: matched by name (else position), NCHW/NHWC transposed, floats cast.

    Mirrors ``harness._adapt_feeds`` with the session's own (name, dtype) and the manifest's layouts.
    """
    names = list(feeds)
    if all(name in feeds for name, _ in wanted):
        pairs = [(name, dtype, feeds[name], name) for name, dtype in wanted]
    elif len(names) == len(wanted):
        pairs = [(name, dtype, feeds[n], n) for (name, dtype), n in zip(wanted, names)]
    else:
        raise DeviceRunError(
            f"the data has inputs {names}; the artifact needs {[n for n, _ in wanted]}"
        )
    out = {}
    for name, dtype, arr, data_name in pairs:
        arr = np.asarray(arr)
        src, dst = data_layouts.get(data_name), layouts.get(name)
        floating = np.issubdtype(arr.dtype, np.floating)
        if arr.ndim == 4 and floating and {src, dst} == {"NCHW", "NHWC"}:
            arr = np.ascontiguousarray(arr.transpose([src.index(axis) for axis in dst]))
        if floating and dtype.startswith("float") and arr.dtype.name != dtype:
            arr = arr.astype(dtype)
        out[name] = arr
    return out


def _layouts(entry: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t.get("layout") for t in entry.get("inputs", ()) if t.get("layout")}


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The run.


def run_artifact(
    entry: dict[str, Any], samples: list[dict[str, Any]], data_layouts: dict[str, str], *, warmup: int,
    iterations: int | None, duration: float | None, threads: int, np: Any,
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Time one artifact and run it on every sample; its JSON record and its outputs per sample."""
    started = now_iso()
    with MemorySampler() as memory:
        io = (entry.get("metadata") or {}).get("io")
        session = SESSIONS[entry["format"]](entry["file"], threads, **({"io": io} if io else {}))
        feeds_list = [adapt_feeds(s, session.inputs, _layouts(entry), data_layouts, np) for s in samples]
        for i in range(warmup):  # memory is sampled through loading and warm-up, not in the timed loop
            session.infer(feeds_list[i % len(feeds_list)])
    latencies = timed_loop(session.infer, feeds_list, warmup=0, iterations=iterations, duration=duration)
    outputs = [[np.asarray(o) for o in session.infer(f)] for f in feeds_list]
    record = {
        "name": entry["name"],
        "path": entry["path"],
        "format": entry["format"],
        "precision": entry["precision"],
        "target": entry["target"],
        "runtime": session.runtime,
        "size_bytes": os.path.getsize(entry["file"]),
        "sha256": entry.get("sha256") or sha256_file(entry["file"]),
        "threads": threads,
        "started_at": started,
        "warmup": warmup,
        "latencies_ms": [round(x, 4) for x in latencies],
        "peak_rss_bytes": memory.peak_bytes,
        "peak_rss_delta_bytes": memory.delta_bytes,
        "outputs": list(session.outputs),
    }
    return record, outputs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the artifacts named by ``args``; the JSON document (outputs are written to ``args.outputs``)."""
    try:
        import numpy as np
    except ImportError:
        raise DeviceRunError(
            f"the device runner needs numpy, which is not installed for {sys.executable}; "
            "install it on the device (pip install numpy) or use another Python",
            EXIT_UNAVAILABLE,
        ) from None
    entries = read_manifest(args.build)
    # the host lays the data out like the build's first artifact (load_build order), whatever is selected
    data_layouts = _layouts(entries[0]) if entries else {}
    if args.artifact:
        chosen = [e for e in entries if e["name"] in args.artifact or e["path"] in args.artifact]
        unknown = set(args.artifact) - {e["name"] for e in chosen} - {e["path"] for e in chosen}
        if unknown:
            known = ", ".join(e["name"] for e in entries)
            raise DeviceRunError(f"no artifact {sorted(unknown)} in the build (it has: {known})", EXIT_USAGE)
        entries = chosen
    samples, batch = read_data(args.data, np)
    labels = None
    if args.labels:
        try:
            labels = np.load(args.labels, allow_pickle=False).reshape(-1).astype(int).tolist()
        except (OSError, ValueError) as exc:
            raise DeviceRunError(f"cannot read labels '{args.labels}': {exc}") from None
    thermal_start = thermal_celsius()
    runs, skipped, arrays, runtimes = [], [], {}, {}
    for entry in entries:
        reason = UNSUPPORTED_TARGETS.get(entry["target"])
        if reason is None and entry["format"] not in SESSIONS:
            reason = f"no device runtime for the '{entry['format']}' format"
        if reason is not None:
            skipped.append({"name": entry["name"], "reason": reason})
            continue
        if not os.path.isfile(entry["file"]):
            raise DeviceRunError(f"artifact '{entry['file']}' ({entry['name']}) is missing from the build")
        record, outputs = run_artifact(
            entry, samples, data_layouts, warmup=args.warmup, iterations=args.iterations,
            duration=args.duration, threads=args.threads, np=np,
        )
        i = len(runs)
        for j, outs in enumerate(outputs):
            for k, value in enumerate(outs):
                arrays[f"a{i}.s{j}.o{k}"] = value
        runtimes[record["runtime"].split(" ")[0]] = record["runtime"]
        runs.append(record)
        print(f"{record['name']}: {len(record['latencies_ms'])} runs on {record['runtime']}", file=sys.stderr)
    if args.outputs:
        _atomic_write(args.outputs, lambda f: np.savez(f, **arrays), binary=True)
    env = device_environment(runtimes)
    env["thermal_c_start"] = thermal_start
    env["thermal_c_end"] = thermal_celsius()
    return {
        "schema": SCHEMA,
        "environment": env,
        "settings": {
            "warmup": args.warmup, "iterations": args.iterations, "duration_s": args.duration,
            "threads": args.threads,
        },
        "samples": len(samples),
        "batch": batch,
        "labels": labels,
        "runs": runs,
        "skipped": skipped,
        # proof for the host (and the tests) that nothing heavy came along
        "imported": {name: name in sys.modules for name in HEAVY_MODULES},
    }


def _atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temporary file and rename it, so a killed runner leaves no half-written result."""
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
        write(f)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m edgec.benchmarks.device",
        description="Run an edgec build's artifacts on this machine: latency, peak memory and outputs.",
    )
    p.add_argument("build", help="a build folder written by edgec build (with its manifest.json)")
    p.add_argument("--data", required=True, help=".npz of input arrays, samples along the first axis")
    p.add_argument("--labels", help=".npy of one integer label per row, recorded for the host")
    p.add_argument("--artifact", action="append", help="run only this artifact (name or path); repeatable")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    p.add_argument("--iterations", type=int, help="timed runs per artifact (default 100)")
    p.add_argument("--duration", type=float, help="time budget in seconds per artifact, instead of --iterations")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each runtime (default 1)")
    p.add_argument("--json", required=True, dest="json_out", help="where to write the results")
    p.add_argument("--outputs", help="where to write every artifact's outputs (.npz), for accuracy on the host")
    args = p.parse_args(argv)
    if args.iterations is not None and args.duration is not None:
        p.error("--iterations and --duration exclude each other")
    if args.iterations is None and args.duration is None:
        args.iterations = 100
    if args.warmup < 0 or (args.iterations is not None and args.iterations < 1):
        p.error("--warmup must be >= 0 and --iterations >= 1")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        doc = run(args)
        _atomic_write(args.json_out, lambda f: json.dump(doc, f, indent=1, allow_nan=False))
    except DeviceRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
