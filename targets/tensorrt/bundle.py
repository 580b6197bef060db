"""The bundle: what a TensorRT build folder (``<out>/<profile>/``) holds besides the ONNX files.

``bundle.json`` says, for the device half (``edgec engine build``) and for people: the inputs with their
min/opt/max optimization-profile shapes, each precision's ONNX file, the TensorRT majors targeted, the DLA
choice. ``README.md`` gives the equivalent ``trtexec`` command lines for boards without edgec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.errors import ConfigError, InputFileError
from edgec.compiler.types import Artifact, InputSpec

BUNDLE_FILE = "bundle.json"
README_FILE = "README.md"
TIMING_CACHE = "timing.cache"
FORMAT = "edgec-tensorrt-bundle"
BACKEND = "tensorrt"


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"


def sidecar_name(precision: str) -> str:
    return f"model.{precision}.engine.json"


def observed_shapes(samples: Any) -> dict[str, list[tuple[int, ...]]]:
    """The shape of every input in every sample of a calibration set (empty without one)."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    for sample in samples or ():
        for name, arr in sample.items():
            seen.setdefault(name, []).append(tuple(np.shape(arr)))
    return seen


def _sizes(values: Any, key: str) -> tuple[int, int, int]:
    """[min, opt, max] (or one size) from ``dynamic_dims``, checked."""
    values = [values] if isinstance(values, int) else list(values) if isinstance(values, (list, tuple)) else values
    if (
        not isinstance(values, list) or len(values) not in (1, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        or sorted(values) != values
    ):
        raise ConfigError(
            f"dynamic_dims['{key}'] must be [min, opt, max] positive integers in order (or one size), not {values!r}",
            hint=f"e.g. target_options: {{tensorrt: {{dynamic_dims: {{{key}: [1, 8, 16]}}}}}}",
        )
    return (values[0], values[0], values[0]) if len(values) == 1 else (values[0], values[1], values[2])


def _override_keys(spec: InputSpec, dims: dict[str, Any]) -> dict[tuple[str, int], tuple[tuple[int, int, int], str]]:
    """``dynamic_dims`` keyed per (input, axis): ``INPUT.AXIS`` keys (``x.2``), or an axis name (``seq``) for
    every axis of that name. An unknown key is an error listing the keys that would work."""
    by_position = {(t.name, a): d for t in spec.inputs for a, d in enumerate(t.shape) if not isinstance(d, int)}
    out: dict[tuple[str, int], tuple[tuple[int, int, int], str]] = {}
    for key, values in dims.items():
        key = str(key)
        name, _, axis = key.rpartition(".")
        if name and axis.isdigit() and (name, int(axis)) in by_position:
            out[(name, int(axis))] = (_sizes(values, key), f"dynamic_dims {key}")
            continue
        named = [pos for pos, d in by_position.items() if str(d) == key]
        if not named:
            valid = ", ".join(f"{n}.{a}" for n, a in by_position) or "none: the model has no dynamic axes"
            raise ConfigError(f"dynamic_dims names '{key}', which is not a dynamic axis of the model",
                              hint=f"use INPUT.AXIS keys: {valid}")
        for pos in named:
            out.setdefault(pos, (_sizes(values, key), f"dynamic_dims {key}"))
    return out


def optimization_profile(
    spec: InputSpec, min_batch: int, opt_batch: int, max_batch: int, dynamic_dims: dict[str, Any] | None,
    declared: InputSpec | None = None, seen: dict[str, list[tuple[int, ...]]] | None = None,
) -> tuple[dict[str, dict[str, list[int]]], dict[str, list[str]]]:
    """min/opt/max shapes per dynamic input of ``spec`` (the ONNX file's own dims), and where each axis's sizes
    came from.

    Per dynamic axis, the first that applies: ``dynamic_dims`` (``INPUT.AXIS`` or an axis name); the batch
    options for axis 0; the size ``--input`` declared (``declared``); the calibration samples' sizes (``seen``:
    the size when there is one, else min / most common / max). Otherwise a ConfigError with a hint to paste.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            f"batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch (got {min_batch}, {opt_batch}, "
            f"{max_batch})"
        )
    overrides = _override_keys(spec, dynamic_dims or {})
    declared_by_name = {t.name: t for t in declared.inputs} if declared is not None else {}
    profile, sources = {}, {}
    for t in spec.inputs:
        if not t.is_dynamic:
            continue
        sizes: list[tuple[int, int, int]] = []
        why: list[str] = []
        for axis, d in enumerate(t.shape):
            given = declared_by_name.get(t.name)
            given_size = given.shape[axis] if given is not None and len(given.shape) == len(t.shape) else None
            observed = sorted({s[axis] for s in (seen or {}).get(t.name, []) if len(s) == len(t.shape)})
            if isinstance(d, int):
                sizes.append((d, d, d))
                why.append("fixed")
            elif (t.name, axis) in overrides:
                size, source = overrides[(t.name, axis)]
                sizes.append(size)
                why.append(source)
            elif axis == 0:
                sizes.append((min_batch, opt_batch, max_batch))
                why.append("batch options")
            elif isinstance(given_size, int):
                sizes.append((given_size, given_size, given_size))
                why.append("--input")
            elif observed:
                counts = [s[axis] for s in seen[t.name] if len(s) == len(t.shape)]
                common = max(observed, key=counts.count)
                sizes.append((observed[0], common, observed[-1]))
                why.append("calibration samples")
            else:
                example = "x".join(str(x) if isinstance(x, int) else "1" if i == 0 else "SIZE"
                                   for i, x in enumerate(t.shape))
                raise ConfigError(
                    f"input '{t.name}' has the dynamic axis {axis} ('{d}'), and TensorRT needs its min/opt/max sizes",
                    hint=f"pass --input {t.name}:{example} (the size the device will see) or --calib samples, or "
                    f"set target_options: {{tensorrt: {{dynamic_dims: {{{t.name}.{axis}: [MIN, OPT, MAX]}}}}}} in "
                    "the recipe",
                )
        profile[t.name] = {key: [s[k] for s in sizes] for k, key in enumerate(("min", "opt", "max"))}
        sources[t.name] = why
    return profile, sources


def bundle_dict(folder: Path, artifacts: list[Artifact]) -> dict[str, Any]:
    """The bundle manifest for the TensorRT artifacts of one profile folder."""
    ours = sorted((a for a in artifacts if a.target == BACKEND), key=lambda a: ["fp32", "fp16", "int8"].index(a.precision.value))
    if not ours:
        raise InputFileError(f"'{folder}' holds no TensorRT artifacts", hint="build with --target jetson (or gpu)")
    first = ours[0]
    meta = first.metadata
    profile = meta.get("optimization_profile", {})
    inputs = []
    for t in first.spec.inputs:
        entry: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "layout": t.layout}
        if t.name in profile:
            entry.update(profile[t.name])
            if t.name in meta.get("profile_sources", {}):
                entry["profile_from"] = meta["profile_sources"][t.name]
        inputs.append(entry)
    precisions = {}
    for a in ours:
        m = a.metadata
        precisions[a.precision.value] = {
            "onnx": Path(a.path).name,
            "sha256": a.sha256,
            "engine": engine_name(a.precision.value),
            "dla": m.get("dla", {"core": None}),
            **{k: m[k] for k in ("fp16", "int8", "lint") if k in m},
        }
    return {
        "format": FORMAT,
        "version": 1,
        "profile": meta.get("device") or meta.get("profile") or folder.name,
        "device": meta.get("device_facts", {}),
        "tensorrt_majors": meta.get("tensorrt_majors", [10, 11]),
        "strongly_typed": True,
        "inputs": inputs,
        "outputs": [t.to_dict() for t in first.spec.outputs],
        "precisions": precisions,
        "timing_cache": TIMING_CACHE,
    }


def write_bundle(folder: Path, artifacts: list[Artifact]) -> list[Path]:
    """Write bundle.json and README.md into ``folder``; returns the files written."""
    bundle = bundle_dict(folder, artifacts)
    manifest = folder / BUNDLE_FILE
    manifest.write_text(json.dumps(bundle, indent=2) + "\n")
    readme = folder / README_FILE
    readme.write_text(render_readme(bundle))
    return [manifest, readme]


def load_bundle(folder: Path) -> dict[str, Any]:
    """A bundle folder's manifest: its bundle.json, or one derived from the build's manifest.json above it."""
    folder = Path(folder)
    if folder.is_file() and folder.name == BUNDLE_FILE:
        folder = folder.parent
    if not folder.is_dir():
        raise InputFileError(f"bundle '{folder}' is not a folder", hint="pass the <out>/<profile> folder of a build")
    path = folder / BUNDLE_FILE
    if path.is_file():
        try:
            bundle = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"cannot read '{path}': {exc}", hint="rebuild with: edgec build ...") from None
        if bundle.get("format") != FORMAT:
            raise InputFileError(f"'{path}' is not an edgec TensorRT bundle", hint="rebuild with: edgec build ...")
        return bundle
    manifest = folder.parent / "manifest.json"
    if not manifest.is_file():
        raise InputFileError(
            f"'{folder}' has no {BUNDLE_FILE} and is not inside an edgec build",
            hint="pass the <out>/<profile> folder written by: edgec build --target jetson ...",
        )
    entries = json.loads(manifest.read_text()).get("artifacts", [])
    arts = [Artifact.from_dict(d, root=folder.parent) for d in entries]
    arts = [a for a in arts if Path(a.path).parent.resolve() == folder.resolve()]
    return bundle_dict(folder, arts)


def _shapes(bundle: dict[str, Any], key: str) -> str:
    return ",".join(f"{i['name']}:{'x'.join(map(str, i[key]))}" for i in bundle["inputs"] if key in i)


def trtexec_command(bundle: dict[str, Any], precision: str, major: int, dla_core: int | None = None,
                    timing_cache: str = TIMING_CACHE, version_compatible: bool = False) -> str:
    """The trtexec line that builds what ``edgec engine build`` builds, for one TensorRT major."""
    entry = bundle["precisions"][precision]
    parts = ["trtexec", f"--onnx={entry['onnx']}", f"--saveEngine={entry['engine']}"]
    weakly_typed_dla = dla_core is not None and major <= 10
    if major <= 10 and not weakly_typed_dla:
        parts.append("--stronglyTyped")
    if dla_core is not None:
        parts += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
        if weakly_typed_dla:
            # TensorRT 10 cannot put a strongly typed network on DLA: precision comes from flags instead.
            parts += ["--int8", "--fp16"] if precision == "int8" else ["--fp16"]
    if any("min" in i for i in bundle["inputs"]):
        parts += [f"--minShapes={_shapes(bundle, 'min')}", f"--optShapes={_shapes(bundle, 'opt')}",
                  f"--maxShapes={_shapes(bundle, 'max')}"]
    parts.append(f"--timingCacheFile={timing_cache}")
    if version_compatible:
        parts.append("--versionCompatible")
    return " ".join(parts)


def render_readme(bundle: dict[str, Any]) -> str:
    profile = bundle["profile"]
    device = bundle.get("device", {})
    majors = bundle["tensorrt_majors"]
    lines = [
        f"# TensorRT bundle for {profile}",
        "",
        f"{device.get('description', '')}".strip(),
        "",
        "Engines are tied to the exact TensorRT version and GPU: build them on the device itself. "
        f"This bundle targets TensorRT {', '.join(f'{m}.x' for m in majors)}.",
        "",
        "## Files",
        "",
    ]
    for p, entry in bundle["precisions"].items():
        lines.append(f"- `{entry['onnx']}`: {p} ONNX (sha256 {entry['sha256'][:12]}...)")
    lines += [f"- `{BUNDLE_FILE}`: inputs with min/opt/max shapes, precisions, TensorRT majors, DLA choice", ""]
    lines += ["## Inputs", ""]
    for i in bundle["inputs"]:
        shape = "x".join(map(str, i["shape"]))
        extra = f" (min {i['min']}, opt {i['opt']}, max {i['max']})" if "min" in i else ""
        lines.append(f"- `{i['name']}`: {i['dtype']} {shape}{extra}")
    lines += [
        "",
        "## With edgec on the device",
        "",
        "```",
        "edgec engine build .                 # every precision; add --precision fp16 for one",
        "edgec bench ..                       # runs the engines, refusing any built for another GPU or TensorRT",
        "```",
        "",
        "## With trtexec only",
        "",
        "Run these in this folder. `timing.cache` speeds up rebuilds on the same device, CUDA and TensorRT version.",
        "",
    ]
    for major in majors:
        title = {10: "TensorRT 10.x (JetPack 6.x / 7.x, or a desktop GPU)",
                 11: "TensorRT 11.x (strongly typed always: no --stronglyTyped, --fp16 or --int8)"}.get(major)
        lines += [f"### {title or f'TensorRT {major}.x'}", "", "```"]
        for p, entry in bundle["precisions"].items():
            dla = entry.get("dla") or {}
            if dla.get("core") is not None and major in dla.get("majors", [major]):
                lines.append(f"# {p}: DLA core {dla['core']}, GPU fallback (what `edgec engine build` does)")
                lines.append(trtexec_command(bundle, p, major, dla_core=dla["core"]))
            else:
                lines.append(trtexec_command(bundle, p, major))
        lines += ["```", ""]
    lines += [
        "Add `--versionCompatible` to build an engine that later TensorRT releases of the same major can load "
        "(the runtime must then allow host code).",
        "",
        "## Notes",
        "",
    ]
    if not device.get("dla_cores"):
        lines.append(f"- DLA: {profile} has none; every engine runs on the GPU.")
    for p, entry in bundle["precisions"].items():
        dla = entry.get("dla") or {}
        if device.get("dla_cores") and dla.get("why"):
            lines.append(f"- {p} DLA: {dla['why']}" + (f". {dla['note']}" if dla.get("note") else ""))
        fp16 = entry.get("fp16")
        if fp16:
            kept = fp16.get("fp32_nodes") or {}
            lines.append(f"- fp16: range check {fp16.get('range_check')}; nodes kept in FP32: "
                         f"{', '.join(kept) if kept else 'none'}")
        int8 = entry.get("int8")
        if int8:
            lines.append(f"- int8: {int8.get('flavour')}, per-channel weights: {int8.get('per_channel')}, "
                         f"conformance: {int8.get('conformance')}")
    lines.append("- Accuracy figures from `edgec bench` on a machine without a CUDA device are ONNX Runtime "
                 "estimates made off the device, not TensorRT measurements.")
    return "\n".join(lines) + "\n"
