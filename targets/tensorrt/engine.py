"""The device half: build a TensorRT engine from a bundle, with a sidecar recording where it was built.

Written against TensorRT's Python API as documented for 10.x and 11.x:
- 11.x: every network is strongly typed; the FP16/INT8 builder flags and the calibrators no longer exist and
  are never touched here; DLA only from 11.4.1 (Jetson AGX Orin, JetPack >= 7.2.2).
- 10.x: strongly typed via NetworkDefinitionCreationFlag.STRONGLY_TYPED, except on DLA, where 10.x needs a
  weakly typed network with the FP16 (and, for the QDQ model, INT8) flags.
A CUDA device is checked through cuda-python before ``tensorrt`` is even imported.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError, InputFileError, TargetBuildError, TargetUnavailableError
from edgec.compiler.types import sha256_file
from edgec.targets.tensorrt import cudart
from edgec.targets.tensorrt.bundle import TIMING_CACHE, load_bundle, sidecar_name
from edgec.targets.tensorrt.devices import DeviceFacts, device_facts, dla_rule, parse_version

TRT_HINT = (
    "on Jetson the tensorrt module comes with JetPack (sudo apt install python3-libnvinfer; make venvs with "
    "--system-site-packages); on a desktop GPU: pip install tensorrt (from NVIDIA's package index)"
)
L4T_RELEASE = Path("/etc/nv_tegra_release")


def load_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise TargetUnavailableError(
            "TensorRT engines need the 'tensorrt' Python module, which is not installed here", hint=TRT_HINT
        ) from None


def jetson_versions(release_file: Path = L4T_RELEASE) -> dict[str, str | None]:
    """L4T release (from /etc/nv_tegra_release) and JetPack version (the nvidia-jetpack package), when on Jetson."""
    l4t = None
    if release_file.is_file():
        first = release_file.read_text(errors="replace").splitlines()[:1]
        # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
        if first and first[0].startswith("# R"):
            major = first[0][3:].split(" ", 1)[0]
            revision = first[0].split("REVISION:", 1)[1].split(",", 1)[0].strip() if "REVISION:" in first[0] else ""
            l4t = f"{major}.{revision}" if revision else major
    jetpack = None
    if l4t is not None:
        try:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True, timeout=10,
                check=False,
            )
            jetpack = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            jetpack = None
    return {"l4t": l4t, "jetpack": jetpack}


def device_fingerprint(trt: Any, rt: Any, index: int = 0) -> dict[str, Any]:
    """What an engine depends on: the TensorRT version, the GPU, and (for the record) CUDA and JetPack."""
    return {"tensorrt": str(trt.__version__), **cudart.device_info(rt, index), **jetson_versions()}


def rebuild_command(bundle_dir: Path, precision: str, dla_core: int | None = None) -> str:
    cmd = f"edgec engine build {bundle_dir} --precision {precision}"
    return cmd + (f" --dla-core {dla_core}" if dla_core is not None else "")


def check_sidecar(sidecar: dict[str, Any], here: dict[str, Any], bundle_dir: Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, with the command that rebuilds it here."""
    problems = []
    built, now = parse_version(sidecar.get("tensorrt")), parse_version(here.get("tensorrt"))
    if sidecar.get("version_compatible"):
        if not built or not now or built[0] != now[0] or now < built:
            problems.append(f"TensorRT {sidecar.get('tensorrt')} (version-compatible) vs {here.get('tensorrt')} here")
    elif sidecar.get("tensorrt") != here.get("tensorrt"):
        problems.append(f"TensorRT {sidecar.get('tensorrt')} vs {here.get('tensorrt')} here")
    if sidecar.get("compute_capability") != here.get("compute_capability") or sidecar.get("gpu_name") != here.get(
        "gpu_name"
    ):
        problems.append(
            f"GPU {sidecar.get('gpu_name')} (sm {sidecar.get('compute_capability')}) vs {here.get('gpu_name')} "
            f"(sm {here.get('compute_capability')}) here"
        )
    if problems:
        precision = sidecar.get("precision", "fp32")
        raise InputFileError(
            f"engine '{sidecar.get('engine')}' was built elsewhere: {'; '.join(problems)}",
            hint=f"rebuild it on this device: {rebuild_command(bundle_dir, precision, sidecar.get('dla_core'))}",
        )


def _logger(trt: Any) -> Any:
    class CollectingLogger(trt.ILogger):
        """Keeps TensorRT's warnings and errors for the sidecar and for error messages, printing nothing."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                self.messages.append((name, msg))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("INTERNAL_ERROR", "ERROR")]

    return CollectingLogger()


@dataclasses.dataclass
class EngineBuild:
    precision: str
    engine: Path
    sidecar: Path
    info: dict[str, Any]
    seconds: float


def _check_bundle_fits(bundle: dict[str, Any], facts: DeviceFacts | None, here: dict[str, Any], folder: Path) -> None:
    majors = [int(m) for m in bundle.get("tensorrt_majors", [])]
    now = parse_version(here["tensorrt"])
    if majors and now[:1] and now[0] not in majors:
        raise InputFileError(
            f"bundle '{folder}' targets TensorRT {', '.join(f'{m}.x' for m in majors)}, and this device has "
            f"TensorRT {here['tensorrt']}",
            hint=f"rebuild the bundle for TensorRT {now[0]}: edgec build ... --target {bundle.get('profile')} "
            f"(recipe target_options: {{tensorrt: {{trt_major: {now[0]}}}}}), or a profile whose JetPack ships it",
        )
    wanted = list(facts.compute_capability) if facts else []
    if wanted and here["compute_capability"] not in wanted:
        raise InputFileError(
            f"bundle '{folder}' was made for {bundle.get('profile')} (sm {', '.join(wanted)}), and this GPU is "
            f"{here['gpu_name']} (sm {here['compute_capability']})",
            hint="rebuild the bundle for this device: edgec build ... --target gpu (or the matching Jetson profile)",
        )


@dataclasses.dataclass(frozen=True)
class _EngineRequest:
    """One engine to build: the bundle's entry for a precision and the build options, checked against the bundle."""

    folder: Path
    precision: str
    bundle: dict[str, Any]
    entry: dict[str, Any]
    onnx_path: Path
    dla_core: int | None
    drop_dla: str  # the hint that turns DLA off, worded for where the DLA choice came from
    facts: DeviceFacts | None
    gpu_fallback: bool
    version_compatible: bool
    cache_path: Path

    @property
    def dynamic(self) -> list[dict[str, Any]]:
        """The bundle's inputs with a dynamic shape (min/opt/max)."""
        return [i for i in self.bundle["inputs"] if "min" in i]


def _engine_request(
    folder: Path, precision: str, dla_core: int | None, use_bundle_dla: bool, timing_cache: Path | None,
    gpu_fallback: bool, version_compatible: bool,
) -> _EngineRequest:
    """Read the bundle and check, without TensorRT, that it can give the engine asked for."""
    bundle = load_bundle(folder)
    entries = bundle["precisions"]
    if precision not in entries:
        raise ConfigError(
            f"bundle '{folder}' has no {precision} model", hint=f"it has: {', '.join(entries)}; or rebuild with -p {precision}"
        )
    entry = entries[precision]
    onnx_path = folder / entry["onnx"]
    if not onnx_path.is_file():
        raise InputFileError(f"'{onnx_path}' listed in the bundle is missing", hint="copy the whole bundle folder")
    drop_dla = "drop --dla-core"
    if dla_core is None and use_bundle_dla:
        dla_core = (entry.get("dla") or {}).get("core")
        drop_dla = "pass --no-dla to build for the GPU (the bundle asked for DLA)"
    try:
        facts = device_facts(bundle["profile"])
    except ConfigError:
        facts = None  # a profile this edgec does not know (built by another version): skip the hardware checks
    if dla_core is not None:
        if precision == "fp32":
            raise ConfigError("DLA runs FP16 and INT8 only; fp32 builds on the GPU", hint=f"{drop_dla}, or pick fp16/int8")
        if facts is not None and facts.dla_cores == 0:
            raise ConfigError(
                f"DLA asked (core {dla_core}) for a bundle made for '{facts.name}', which has no DLA", hint=drop_dla
            )
    cache_path = Path(timing_cache) if timing_cache else folder / TIMING_CACHE
    return _EngineRequest(folder, precision, bundle, entry, onnx_path, dla_core, drop_dla, facts, gpu_fallback,
                          version_compatible, cache_path)


def _parse_network(trt: Any, builder: Any, logger: Any, request: _EngineRequest, weakly_typed: bool) -> Any:
    """The bundle's ONNX model parsed into a TensorRT network; parser errors name each failing node."""
    # 11.x: strongly typed is the only mode (its STRONGLY_TYPED flag is deprecated and ignored).
    major = parse_version(trt.__version__)[0]
    strongly_typed_flag = 0 if major >= 11 or weakly_typed else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(strongly_typed_flag)
    parser = trt.OnnxParser(network, logger)
    if (request.dla_core is not None and hasattr(trt, "OnnxParserFlag")
            and hasattr(trt.OnnxParserFlag, "ADJUST_FOR_DLA")):
        parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)
    if not parser.parse_from_file(str(request.onnx_path)):
        problems = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            problems.append(f"node '{err.node_name()}' ({err.node_operator()}): {' '.join(err.desc().split())}")
        raise TargetBuildError(
            f"TensorRT {trt.__version__} cannot parse '{request.onnx_path.name}': "
            f"{'; '.join(problems) or 'unknown error'}",
            hint="the nodes named are not supported by this TensorRT; see the bundle's lint results in bundle.json",
        )
    return network


def _builder_config(trt: Any, builder: Any, request: _EngineRequest, weakly_typed: bool,
                    report: Callable[[str], None]) -> Any:
    """The builder config: optimization profile, timing cache, DLA and compatibility flags."""
    config = builder.create_builder_config()
    dynamic = request.dynamic
    if dynamic:
        profile = builder.create_optimization_profile()
        for i in dynamic:
            profile.set_shape(i["name"], i["min"], i["opt"], i["max"])
        config.add_optimization_profile(profile)
    cache_path = request.cache_path
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, False):
        report(f"timing cache '{cache_path}' is from another device or TensorRT version: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    if request.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(request.dla_core)
        if request.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if weakly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
            if request.precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
    if request.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return config


def _serialize(trt: Any, builder: Any, network: Any, config: Any, logger: Any, request: _EngineRequest,
               here: dict[str, Any], report: Callable[[str], None]) -> tuple[Any, float]:
    """Build the serialized engine (the plan) and the seconds it took; no plan is a TargetBuildError."""
    dla_core = request.dla_core
    report(f"[engine {request.precision}] building with TensorRT {trt.__version__} on {here['gpu_name']}"
           + (f", DLA core {dla_core}" if dla_core is not None else ""))
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = round(time.perf_counter() - start, 3)
    if plan is None:
        raise TargetBuildError(
            f"TensorRT {trt.__version__} could not build an engine from '{request.onnx_path.name}': "
            f"{'; '.join(logger.errors()[-3:]) or 'no error was logged'}",
            hint="see the errors above; try another precision, or without --dla-core",
        )
    return plan, seconds


def _sidecar_info(request: _EngineRequest, engine_path: Path, here: dict[str, Any], weakly_typed: bool,
                  seconds: float, logger: Any) -> dict[str, Any]:
    """What the sidecar records: the engine, its source, where and how it was built."""
    dla_core = request.dla_core
    return {
        "engine": engine_path.name,
        "sha256": sha256_file(engine_path),
        "onnx": request.onnx_path.name,
        "onnx_sha256": sha256_file(request.onnx_path),
        "precision": request.precision,
        "profile": request.bundle.get("profile"),
        **here,
        "strongly_typed": not weakly_typed,
        "dla_core": dla_core,
        "gpu_fallback": bool(request.gpu_fallback) if dla_core is not None else None,
        "version_compatible": bool(request.version_compatible),
        "optimization_profile": {i["name"]: {k: i[k] for k in ("min", "opt", "max")} for i in request.dynamic},
        "timing_cache": str(request.cache_path),
        "build_seconds": seconds,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "warnings": [m for s, m in logger.messages if s == "WARNING"][:50],
    }


def build_engine(
    folder: Path,
    precision: str,
    *,
    dla_core: int | None = None,
    timing_cache: Path | None = None,
    version_compatible: bool = False,
    gpu_fallback: bool = True,
    use_bundle_dla: bool = True,
    report: Callable[[str], None] = lambda _m: None,
) -> EngineBuild:
    """Build ``<folder>/model.<precision>.engine`` and its sidecar on this device.

    ``dla_core`` overrides the bundle's DLA choice; ``use_bundle_dla=False`` ignores it (GPU only).
    """
    folder = Path(folder)
    request = _engine_request(folder, precision, dla_core, use_bundle_dla, timing_cache, gpu_fallback,
                              version_compatible)
    dla_core, drop_dla, facts = request.dla_core, request.drop_dla, request.facts

    # No TensorRT object may exist before this: without a device TensorRT segfaults.
    rt = cudart.require_device("building a TensorRT engine")
    trt = load_tensorrt()
    here = device_fingerprint(trt, rt)
    _check_bundle_fits(request.bundle, facts, here, folder)
    version = parse_version(trt.__version__)
    if dla_core is not None and facts is not None:
        ok, why = dla_rule(facts, version)
        if not ok:
            raise ConfigError(f"DLA is not available here: {why}", hint=drop_dla)

    logger = _logger(trt)
    builder = trt.Builder(logger)
    weakly_typed = dla_core is not None and version[0] <= 10
    if dla_core is not None and dla_core >= int(builder.num_DLA_cores):
        raise ConfigError(
            f"DLA core {dla_core}: this device's TensorRT reports {builder.num_DLA_cores} DLA core(s)",
            hint=f"{drop_dla}, or use a core number below that",
        )
    network = _parse_network(trt, builder, logger, request, weakly_typed)
    config = _builder_config(trt, builder, request, weakly_typed, report)
    plan, seconds = _serialize(trt, builder, network, config, logger, request, here, report)

    engine_path = folder / request.entry.get("engine", f"model.{precision}.engine")
    with open(engine_path, "wb") as f:
        f.write(plan)
    with open(request.cache_path, "wb") as f:
        f.write(config.get_timing_cache().serialize())
    info = _sidecar_info(request, engine_path, here, weakly_typed, seconds, logger)
    sidecar = folder / sidecar_name(precision)
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    report(f"[engine {precision}] wrote {engine_path.name} in {seconds:.1f} s")
    return EngineBuild(precision, engine_path, sidecar, info, seconds)


def build_engines(folder: Path, precisions: tuple[str, ...] = (), **kwargs: Any) -> list[EngineBuild]:
    """One engine per precision asked for (every precision of the bundle by default)."""
    bundle = load_bundle(Path(folder))
    wanted = list(precisions) or list(bundle["precisions"])
    return [build_engine(folder, p, **kwargs) for p in wanted]

