"""The public API: what the CLI commands call. Wires the driver's recipe to the compiler, targets and data."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext, Reporter, silent_reporter
from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError
from edgec.compiler.pipeline import Pipeline
from edgec.compiler.types import Artifact, Precision, TensorSpec, sha256_file
from edgec.compiler.versions import tool_versions
from edgec.recipe import Recipe

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.yaml"


@dataclasses.dataclass
class BuildResult:
    out: Path
    manifest: dict[str, Any]

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact.from_dict(d, root=self.out) for d in self.manifest["artifacts"]]


@dataclasses.dataclass
class _Plan:
    """The validated recipe: targets resolved, options parsed, availability checked."""

    checkpoint: Path
    out: Path
    inputs: tuple[TensorSpec, ...]
    builds: list[tuple[Any, Any, Precision]]  # (profile, target instance, precision)
    needs_int8: bool


def plan_build(recipe: Recipe) -> _Plan:
    from edgec.compiler.stages.calibrate import METHODS
    from edgec.targets.base import parse_options
    from edgec.targets.registry import resolve_target, target_class

    if not recipe.checkpoint:
        raise ConfigError("no checkpoint given", hint="edgec build CHECKPOINT ... (or `checkpoint:` in the recipe)")
    checkpoint = Path(recipe.checkpoint)
    if not checkpoint.is_file():
        raise InputFileError(f"checkpoint '{checkpoint}' does not exist", hint="check the path")
    if not recipe.out:
        raise ConfigError("no output folder given", hint="pass --out DIR")
    out = Path(recipe.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file", hint="name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(
            f"--out '{out}' is a non-empty folder that is not an edgec build",
            hint="choose a new folder; edgec only replaces folders it built",
        )
    if not recipe.target:
        raise ConfigError("no target given", hint="pass --target (see: edgec targets)")
    if not recipe.precision:
        raise ConfigError("no precision given", hint="pass --precision fp32|fp16|int8")
    precisions = list(dict.fromkeys(Precision.parse(p) for p in recipe.precision))
    if recipe.calibration_method not in METHODS:
        raise ConfigError(
            f"unknown calibration method '{recipe.calibration_method}'", hint=f"use one of: {', '.join(METHODS)}"
        )
    if recipe.calib_samples is not None and recipe.calib_samples <= 0:
        raise ConfigError(f"--calib-samples must be positive, not {recipe.calib_samples}")
    needs_int8 = Precision.INT8 in precisions
    if needs_int8 and not recipe.calib:
        raise CalibrationError("INT8 needs calibration data", hint="pass --calib PATH (.npz, .npy, an image folder)")
    builds = []
    for name in dict.fromkeys(recipe.target):
        profile = resolve_target(name)
        cls = target_class(profile.backend)
        cls.check_available()
        for p in precisions:
            if p not in profile.precisions or p not in cls.precisions:
                allowed = ", ".join(sorted(x.value for x in profile.precisions & cls.precisions))
                raise ConfigError(f"target '{name}' does not support {p.value}", hint=f"it supports: {allowed}")
        values = {**profile.options, **recipe.target_options.get(profile.backend, {})}
        target = cls(parse_options(cls.Options, values, f"backend '{profile.backend}'"))
        builds.extend((profile, target, p) for p in precisions)
    unknown = set(recipe.target_options) - {profile.backend for profile, _, _ in builds}
    if unknown:
        raise ConfigError(
            f"target_options for '{sorted(unknown)[0]}', which no requested target uses",
            hint="target_options keys are backend names (see: edgec targets)",
        )
    inputs = tuple(TensorSpec.parse(s) for s in recipe.inputs)
    return _Plan(checkpoint, out, inputs, builds, needs_int8)


def build(recipe: Recipe, report: Reporter = silent_reporter, cache_dir: Path | None = None) -> BuildResult:
    """Run ``edgec build``: every artifact lands in ``recipe.out`` at once, or nothing does."""
    from edgec.calibration_data import load_dataset
    from edgec.compiler.stages.calibrate import CalibrateStage
    from edgec.compiler.stages.export import ExportStage, VerifyStage
    from edgec.compiler.stages.load import LoadStage, checkpoint_key, detect_format
    from edgec.compiler.stages.target import TargetStage

    plan = plan_build(recipe)
    out = plan.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="edgec-work-"))
    ctx = BuildContext(work_dir=work, cache=BuildCache(cache_dir, enabled=recipe.cache), report=report, seed=recipe.seed)
    try:
        pipeline = Pipeline(ctx)
        ckpt_sha = checkpoint_key(plan.checkpoint)
        pipeline.seed("checkpoint", plan.checkpoint, ckpt_sha)
        pipeline.add(LoadStage(plan.checkpoint, plan.inputs, recipe.model_factory, recipe.trust_checkpoint))
        pipeline.add(ExportStage(opset=recipe.opset, slim=recipe.slim))
        onnx_model = pipeline.value("onnx")

        calibration = None
        if recipe.calib:
            report(f"[calibration data] reading {recipe.calib}")
            calibration = load_dataset(
                recipe.calib, onnx_model.spec, samples=recipe.calib_samples, seed=recipe.seed,
                preprocess=recipe.preprocess or None, role="calibration",
            )
        pipeline.seed("calibration", calibration, calibration.fingerprint if calibration is not None else "none")
        checks = [pipeline.add(VerifyStage())]
        if plan.needs_int8:
            pipeline.add(CalibrateStage(recipe.calibration_method))
        stage_names = [pipeline.add(TargetStage(target, profile.folder, p)) for profile, target, p in plan.builds]
        pipeline.run(checks + stage_names)

        partial.mkdir()
        artifacts: list[Artifact] = []
        for name in stage_names:
            folder = name.split(":", 1)[1].split("/")[0]
            dest = partial / folder
            dest.mkdir(exist_ok=True)
            for art in pipeline.value(name):
                target_path = dest / art.path.name
                shutil.copyfile(art.path, target_path)
                art.path = target_path
                art.metadata = {**art.metadata, "profile": folder}
                artifacts.append(art)
        manifest = _manifest(recipe, plan, ckpt_sha, detect_format(plan.checkpoint), onnx_model, calibration,
                             pipeline, artifacts, partial)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        _write_recipe(recipe, partial / RECIPE_FILE)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        report(f"wrote {len(artifacts)} artifact(s) to {out}")
        return BuildResult(out, manifest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _manifest(recipe, plan, ckpt_sha, fmt, onnx_model, calibration, pipeline, artifacts, root) -> dict[str, Any]:
    records = pipeline.records
    calib_info = None
    if calibration is not None:
        calib_info = {"source": str(recipe.calib), "samples": len(calibration), "sha256": calibration.fingerprint}
        stats = records.get("calibration_stats")
        if stats is not None:
            calib_info["method"] = recipe.calibration_method
            calib_info["tensors"] = stats.summary.get("tensors")
    return {
        "edgec_version": tool_versions().get("edgec"),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(plan.checkpoint), "sha256": ckpt_sha, "format": fmt},
        **onnx_model.spec.to_dict(),
        "export": {**onnx_model.info, **records["export_check"].summary},
        "calibration": calib_info,
        "artifacts": [a.to_dict(root=root) for a in artifacts],
        "stages": [r.to_dict() for r in records.values()],
        "tool_versions": tool_versions(),
        "recipe": recipe.to_dict(),
    }


def _write_recipe(recipe: Recipe, path: Path) -> None:
    import yaml

    data = recipe.to_dict()
    for key in ("checkpoint", "calib", "out"):
        value = data.get(key)
        if isinstance(value, str) and Path(value).exists():
            data[key] = str(Path(value).resolve())
    path.write_text(
        "# The resolved recipe of this build: `edgec build --config recipe.yaml` repeats it.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


def read_manifest(build_dir: Path) -> dict[str, Any]:
    path = Path(build_dir) / MANIFEST
    if not path.is_file():
        raise InputFileError(f"'{build_dir}' is not an edgec build folder (no {MANIFEST})", hint="run edgec build first")
    return json.loads(path.read_text())


def inspect_model(path: Path, inputs=(), model_factory: str | None = None, trust_checkpoint: bool = False) -> dict:
    """What ``edgec inspect`` shows; torch checkpoints are exported to a temporary ONNX file to count."""
    import onnx

    from edgec.compiler.onnxutil import mac_count, op_histogram, parameter_count
    from edgec.compiler.stages.export import ExportStage
    from edgec.compiler.stages.load import detect_format, load_checkpoint, onnx_spec

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"'{path}' does not exist", hint="check the path")
    fmt = detect_format(path)
    specs = tuple(TensorSpec.parse(s) for s in inputs)
    loaded = load_checkpoint(path, specs, model_factory, trust_checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if loaded.kind == "onnx":
            model = onnx.load(str(path))
        else:
            ctx = BuildContext(work_dir=Path(tmp), cache=BuildCache(enabled=False))
            exported = ExportStage().run({"model": loaded}, Path(tmp), ctx)
            model = onnx.load(str(exported.path))
        spec = onnx_spec(model)
        return {
            "path": str(path),
            "format": fmt,
            "size_bytes": path.stat().st_size,
            "inputs": [t.to_dict() for t in (loaded.spec.inputs if loaded.kind == "torch" else spec.inputs)],
            "outputs": [t.to_dict() for t in spec.outputs],
            "parameters": parameter_count(model),
            "macs": mac_count(model),
            "ops": op_histogram(model),
        }


def bench(
    path: Path,
    data: str,
    *,
    labels: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    reference: str | None = None,
    inputs=(),
    model_factory: str | None = None,
    trust_checkpoint: bool = False,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    threads: int = 1,
    report: Reporter = silent_reporter,
):
    """Run ``edgec bench``: every artifact of a build (or one artifact) on its runtime, against a reference.

    The reference is, by default, the build's FP32 artifact (an exact export of the checkpoint, whose error
    against torch the manifest records); ``reference`` names a checkpoint (run in torch) or an ONNX file.
    """
    from edgec.benchmarks.harness import bench_artifacts, load_build
    from edgec.calibration_data import load_dataset
    from edgec.compiler.modelio import torch_run
    from edgec.compiler.stages.load import detect_format, load_checkpoint

    if iterations is not None and duration is not None:
        raise ConfigError("--iterations and --duration exclude each other", hint="give one of them")
    artifacts, manifest = load_build(path)
    spec = artifacts[0].spec
    evaluation = load_dataset(data, spec, samples=samples, seed=seed, role="evaluation", labels=labels)
    report(f"[data] {len(evaluation)} evaluation samples from {data}")
    ref_fn = ref_artifact = None
    ref_name = None
    if reference:
        ref_path = Path(reference)
        if not ref_path.is_file():
            raise InputFileError(f"--reference '{reference}' does not exist", hint="pass a checkpoint or an ONNX file")
        if detect_format(ref_path) == "onnx":
            ref_artifact = load_build(ref_path)[0][0]
        else:
            recipe = manifest.get("recipe", {})
            specs = tuple(TensorSpec.parse(s) for s in (inputs or recipe.get("inputs") or ()))
            loaded = load_checkpoint(
                ref_path, specs, model_factory or recipe.get("model_factory"),
                trust_checkpoint or bool(recipe.get("trust_checkpoint")),
            )
            in_names = spec.input_names
            out_names = [t.name for t in spec.outputs]

            def ref_fn(feeds):
                return dict(zip(out_names, torch_run(loaded.module, feeds, in_names)))

            ref_name = f"torch ({ref_path.name})"
    results = bench_artifacts(
        artifacts, evaluation.samples, reference=ref_fn, reference_artifact=ref_artifact,
        labels=getattr(evaluation, "labels", None), warmup=warmup, iterations=iterations, duration=duration,
        threads=threads, progress=report, reference_name=ref_name, data_source=str(data),
    )
    return results
