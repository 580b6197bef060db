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

from edgec.benchmarks.device import MANIFEST  # one name for it: the device runner, which imports no edgec, reads it too
from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext, Reporter, silent_reporter
from edgec.compiler.errors import CalibrationError, ConfigError, EdgecError, InputFileError, TargetUnavailableError
from edgec.compiler.pipeline import Pipeline
from edgec.compiler.types import Artifact, ModelFormat, Precision, TensorSpec
from edgec.compiler.versions import tool_versions
from edgec.recipe import Recipe

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
    prune_criterion: str | None = None  # resolved; None when not pruning
    budget: Any = None  # the accuracy budget verification judges by


def plan_build(recipe: Recipe) -> _Plan:
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
    asked = list(dict.fromkeys(Precision.parse(p) for p in recipe.precision))
    if recipe.calib_samples is not None and recipe.calib_samples <= 0:
        raise ConfigError(f"--calib-samples must be positive, not {recipe.calib_samples}")
    builds = []
    for name in dict.fromkeys(recipe.target):
        profile = resolve_target(name)
        cls = target_class(profile.backend)
        supported = profile.precisions & cls.precisions
        # Without --precision: FP32 where the target has it, else what it has (a microcontroller: INT8).
        precisions = asked or ([Precision.FP32] if Precision.FP32 in supported else sorted(supported))
        for p in precisions:
            if p not in supported:
                allowed = ", ".join(sorted(x.value for x in supported))
                hint = f"it supports: {allowed}"
                if p.value in profile.unsupported:
                    hint = f"{profile.unsupported[p.value]}; {hint}"
                if supported == {Precision.INT8}:
                    hint += " (microcontrollers run full-integer models: pass --precision int8 --calib PATH)"
                raise ConfigError(f"target '{name}' does not support {p.value}", hint=hint)
        cls.check_available()
        values = {**profile.options, **recipe.target_options.get(profile.backend, {})}
        target = cls(parse_options(cls.Options, values, f"backend '{profile.backend}'"))
        for p in precisions:
            _check_requirements(name, target, target.requires(p), checkpoint, recipe)
        builds.extend((profile, target, p) for p in precisions)
    needs_int8 = any(p == Precision.INT8 for _, _, p in builds)
    unknown = set(recipe.target_options) - {profile.backend for profile, _, _ in builds}
    if unknown:
        raise ConfigError(
            f"target_options for '{sorted(unknown)[0]}', which no requested target uses",
            hint="target_options keys are backend names (see: edgec targets)",
        )
    inputs = tuple(TensorSpec.parse(s) for s in recipe.inputs)
    criterion = _plan_compression(recipe, checkpoint)
    if recipe.calibrate_confidence and not (recipe.verify and recipe.verify_labels):
        raise ConfigError(
            "--calibrate-confidence fits temperatures on labelled held-out data",
            hint="pass --verify-labels (labels of --verify-data, or of --calib), and keep verification on",
        )
    if recipe.verify_labels and not (recipe.verify_data or recipe.calib):
        raise ConfigError("--verify-labels needs the data they label", hint="pass --verify-data or --calib")
    from edgec.benchmarks.verify import Budget

    budget = Budget(recipe.max_accuracy_drop, recipe.min_cosine)
    return _Plan(checkpoint, out, inputs, builds, needs_int8, criterion, budget)


def _check_requirements(name: str, target: Any, needs: tuple[str, ...], checkpoint: Path, recipe: Recipe) -> None:
    """The one check of what a target declares it needs (``Target.requires``)."""
    from edgec.compiler.stages.load import detect_format

    if "torch" in needs and detect_format(checkpoint) == "onnx":
        # No ONNX -> TFLite route converted enough real files to ship (onnx2torch 0 of 11, onnx2tf 4-9 of 11
        # with 1-2 full-integer): see the README's "TorchScript and ONNX checkpoints for arm, mcu and executorch".
        raise ConfigError(
            f"target '{name}' {target.converter}, but '{checkpoint}' is an ONNX file, and edgec has no "
            "ONNX-to-PyTorch route it can verify",
            hint="pass the PyTorch checkpoint (.pt2, TorchScript, or a state_dict with --model-factory), or use "
            "an ONNX target (cpu, jetson, gpu)",
        )
    if "calibration" in needs and not recipe.calib:
        raise CalibrationError("INT8 needs calibration data", hint="pass --calib PATH (.npz, .npy, an image folder)")


def _plan_compression(recipe: Recipe, checkpoint: Path) -> str | None:
    """Check the pruning and distillation options together; returns the pruning criterion (None: no pruning)."""
    from edgec.compiler.stages.load import detect_format

    pruning = recipe.prune is not None or recipe.prune_macs is not None
    for option, value in (("--prune", recipe.prune), ("--prune-macs", recipe.prune_macs)):
        if value is not None and not 0.0 < value < 1.0:
            raise ConfigError(
                f"{option} {value}: the fraction to remove must be between 0 and 1 (exclusive)",
                hint=f"e.g. {option} 0.5",
            )
    if recipe.prune is not None and recipe.prune_macs is not None:
        raise ConfigError("--prune and --prune-macs exclude each other", hint="give a channel or a MAC fraction")
    if not pruning:
        for option, given in (("--protect", recipe.protect), ("--prune-criterion", recipe.prune_criterion),
                              ("--prune-global", recipe.prune_global), ("--prune-round-to", recipe.prune_round_to)):
            if given:
                raise ConfigError(f"{option} applies only to pruning", hint="add --prune RATIO or --prune-macs FRACTION")
    if recipe.student and pruning:
        raise ConfigError(
            "--student and pruning exclude each other: the student is either your architecture or the pruned model",
            hint="drop --student to distill the pruned model, or drop --prune/--prune-macs",
        )
    if recipe.student and not recipe.distill:
        raise ConfigError("--student is only used by --distill", hint="add --distill")
    if recipe.distill and not (pruning or recipe.student):
        raise ConfigError(
            "--distill needs a student: a pruned model or a smaller architecture",
            hint="add --prune RATIO, --prune-macs FRACTION or --student module:function",
        )
    if (pruning or recipe.distill) and detect_format(checkpoint) == "onnx":
        what = "pruning" if pruning else "distillation"
        raise ConfigError(
            f"{what} needs a PyTorch model, but '{checkpoint}' is an ONNX file",
            hint="build from the PyTorch checkpoint (.pt2, or a state_dict with --model-factory)",
        )
    if pruning and detect_format(checkpoint) in ("exported-program", "torchscript") and not recipe.model_factory:
        raise ConfigError(
            f"pruning needs the model's Python code, but '{checkpoint}' holds a traced graph whose layers "
            "cannot be pruned or trained",
            hint="pass --model-factory module:function building the same architecture (edgec loads the "
            "checkpoint's weights into it)",
        )
    if recipe.train_labels and not recipe.train_data:
        raise ConfigError("--train-labels needs --train-data", hint="pass the training samples with --train-data")
    criterion = None
    if pruning:
        criterion = recipe.prune_criterion or ("taylor" if recipe.train_data else "l1")
        if criterion == "taylor" and not recipe.train_data:
            raise ConfigError("--prune-criterion taylor needs data", hint="pass --train-data, or use l1 or l2")
        if recipe.prune_round_to is not None and recipe.prune_round_to < 1:
            raise ConfigError(f"--prune-round-to must be a positive channel count, not {recipe.prune_round_to}")
    if recipe.train_data and not (recipe.distill or criterion == "taylor"):
        raise ConfigError("--train-data is only used by --distill and Taylor pruning", hint="add --distill")
    if recipe.distill:
        if not recipe.train_data:
            raise ConfigError("--distill needs training data", hint="pass --train-data (the same formats as --calib)")
        if recipe.hard_label_weight and not recipe.train_labels:
            raise ConfigError(
                f"the hard-label loss (--hard-label-weight {recipe.hard_label_weight}) needs labels",
                hint="pass --train-labels with one class per training sample, or --hard-label-weight 0",
            )
        _distill_options(recipe).check()
        if recipe.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise TargetUnavailableError(
                    "--tensorboard needs the Python package 'tensorboard', which is not installed",
                    hint="pip install tensorboard, or build without --tensorboard",
                )
    else:
        for option, given in (("--tensorboard", recipe.tensorboard),
                              ("--feature-layer", recipe.feature_layers), ("--hard-label-weight", recipe.hard_label_weight)):
            if given:
                raise ConfigError(f"{option} applies only to --distill", hint="add --distill")
    return criterion


def _distill_options(recipe: Recipe) -> Any:
    from edgec.compiler.stages.distill import DistillOptions

    return DistillOptions(
        epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size, temperature=recipe.distill_temperature,
        hard_label_weight=recipe.hard_label_weight, feature_layers=tuple(recipe.feature_layers),
        patience=recipe.patience, seed=recipe.seed,
    )


def _train_data(recipe: Recipe, spec: Any) -> Any:
    """The training set (an EvaluationSet when labels are given), read like evaluation data.

    The readers name their own options in messages (--data, --labels); they are renamed to the training ones.
    """
    from edgec.calibration_data import load_dataset

    try:
        return load_dataset(
            recipe.train_data, spec, seed=recipe.seed, preprocess=recipe.preprocess or None, role="evaluation",
            labels=recipe.train_labels,
        )
    except EdgecError as exc:
        def rename(text: str | None) -> str | None:
            if text is None:
                return None
            return text.replace("--data", "--train-data").replace("--labels", "--train-labels")

        raise type(exc)(rename(exc.message), rename(exc.hint)) from None


def _train_data_key(data: Any) -> str:
    import hashlib

    from edgec.compiler.cache import hash_key

    labels = getattr(data, "labels", None)
    labels_sha = hashlib.sha256(labels.tobytes()).hexdigest() if labels is not None else None
    return hash_key({"samples": data.fingerprint, "labels": labels_sha})


def _add_compression(pipeline: Pipeline, recipe: Recipe, plan: _Plan, report: Reporter) -> str:
    """Add the pruning and distillation stages; returns the name of the model export should read."""
    from edgec.compiler.stages.distill import DistillStage
    from edgec.compiler.stages.prune import PruneStage

    final = "model"
    if not (plan.prune_criterion or recipe.distill):
        return final
    labels = False
    if recipe.train_data:
        report(f"[training data] reading {recipe.train_data}")
        data = _train_data(recipe, pipeline.value("model").spec)
        labels = getattr(data, "labels", None) is not None
        pipeline.seed("train_data", data, _train_data_key(data))
    if plan.prune_criterion:
        final = pipeline.add(PruneStage(
            ratio=recipe.prune, macs=recipe.prune_macs, criterion=plan.prune_criterion,
            global_pruning=recipe.prune_global, protect=tuple(recipe.protect), round_to=recipe.prune_round_to,
            model_factory=recipe.model_factory, seed=recipe.seed,
        ))
    if recipe.distill:
        final = pipeline.add(DistillStage(
            _distill_options(recipe), student_source=final if plan.prune_criterion else None,
            student=recipe.student, model_factory=recipe.model_factory, tensorboard=bool(recipe.tensorboard),
            has_labels=labels,
        ))
    return final


def build(recipe: Recipe, report: Reporter = silent_reporter, cache_dir: Path | None = None) -> BuildResult:
    """Run ``edgec build``: every artifact lands in ``recipe.out`` at once, or nothing does."""
    from edgec.compiler.stages.calibrate import CalibrateStage
    from edgec.compiler.stages.export import ExportStage, VerifyStage
    from edgec.compiler.stages.load import LoadStage, checkpoint_key, detect_format
    from edgec.compiler.stages.target import TargetStage
    from edgec.verification import Build

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
        final = _add_compression(pipeline, recipe, plan, report)
        pipeline.add(ExportStage(opset=recipe.opset, slim=recipe.slim, source=final))
        onnx_model = pipeline.value("onnx")
        _check_not_quantized(onnx_model, plan, report)

        calibration, held = _data(recipe, plan, onnx_model, report)
        pipeline.seed("calibration", calibration, calibration.fingerprint if calibration is not None else "none")
        tasks = _tasks(recipe, onnx_model, held, report)
        checks = [pipeline.add(VerifyStage(source=final))]
        if plan.needs_int8:
            pipeline.add(CalibrateStage(recipe.calibration_method))
        builds = [
            Build(pipeline.add(TargetStage(target, profile.folder, p, source=final)), profile.folder, target, p)
            for profile, target, p in plan.builds
        ]
        pipeline.run(checks + [b.stage for b in builds])
        coverage = _representativeness(pipeline, recipe, plan, onnx_model, calibration, held, report)
        shipped = _verify(pipeline, recipe, plan, builds, onnx_model, held, tasks, report)

        partial.mkdir()
        artifacts: list[Artifact] = []
        for build_, (stage, record) in zip(builds, shipped):
            dest = partial / build_.folder
            dest.mkdir(exist_ok=True)
            for art in pipeline.value(stage):
                target_path = dest / art.path.name
                shutil.copyfile(art.path, target_path)
                # Files a target writes beside an artifact and names in its metadata (a bundled program).
                for companion in art.metadata.get("companions", ()):
                    shutil.copyfile(art.path.with_name(companion), dest / companion)
                art.path = target_path
                art.metadata = {**art.metadata, "profile": build_.folder, **record}
                artifacts.append(art)
        for profile, target in {p.folder: t for p, t, _ in plan.builds}.items():
            folder = partial / profile
            target.finish_folder(folder, [a for a in artifacts if a.path.parent == folder])
        manifest = _manifest(recipe, plan, ckpt_sha, detect_format(plan.checkpoint), onnx_model, calibration,
                             pipeline, artifacts, partial)
        manifest["tasks"] = [t.to_dict() for t in tasks]
        if coverage is not None:
            manifest["calibration"]["representativeness"] = coverage
        manifest["verification"] = held.to_dict() if held is not None else "skipped (--no-verify)"
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        _write_recipe(recipe, partial / RECIPE_FILE)
        if recipe.tensorboard:
            _copy_tensorboard(pipeline, Path(recipe.tensorboard), report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        report(f"wrote {len(artifacts)} artifact(s) to {out}")
        return BuildResult(out, manifest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _check_not_quantized(onnx_model: Any, plan: _Plan, report: Reporter) -> None:
    """An ONNX file quantized already (QDQ, ConvInteger, QLinear ops) is not quantized again: INT8 is refused
    naming its quantized ops; other precisions ship it as it is, with a warning that it is not a float model."""
    ops = onnx_model.info.get("quantized_ops") or {}
    if not ops:
        return
    named = ", ".join(f"{n} {op}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:5])
    if plan.needs_int8:
        raise InputFileError(
            f"'{plan.checkpoint.name}' is quantized already ({named}): edgec quantizes float models",
            hint="build -p fp32 to ship it as it is, or give the float model it was quantized from")
    report(f"warning: '{plan.checkpoint.name}' is quantized already ({named}): its artifacts keep those ops as "
           "they are, whatever precision they are labelled")


#: Fewer held-out samples than this get a warning: one of them is worth more than 3 points of agreement.
FEW_TO_VERIFY = 30


def _data(recipe: Recipe, plan: _Plan, onnx_model: Any, report: Reporter) -> tuple[Any, Any]:
    """The calibration set, and the held-out data verification runs on (None with --no-verify or when nothing is
    compressed): --verify-data, else a seeded part of --calib kept out of calibration, else random inputs."""
    from edgec.calibration_data import load_dataset
    from edgec.verification import HeldOut, random_holdout, split_holdout

    verifying = recipe.verify and any(p != Precision.FP32 for _, _, p in plan.builds)
    calibration = None
    if recipe.calib:
        report(f"[calibration data] reading {recipe.calib}")
        calib_labels = recipe.verify_labels if verifying and not recipe.verify_data else None
        calibration = load_dataset(
            recipe.calib, onnx_model.spec, samples=recipe.calib_samples, seed=recipe.seed,
            preprocess=recipe.preprocess or None, role="calibration", labels=calib_labels,
        )
    if not verifying:
        return calibration, None
    if recipe.verify_data:
        report(f"[verification data] reading {recipe.verify_data}")
        data = load_dataset(recipe.verify_data, onnx_model.spec, seed=recipe.seed, preprocess=recipe.preprocess or None,
                            role="evaluation", labels=recipe.verify_labels)
        return calibration, HeldOut(data.samples, f"--verify-data {recipe.verify_data} ({len(data)} samples)",
                                    getattr(data, "labels", None))
    if calibration is not None:
        calibration, held = split_holdout(calibration, recipe.seed)
        if len(held.samples) < FEW_TO_VERIFY:
            report(f"warning: verification runs on {held.description}: one sample moves an agreement by "
                   f"{100 / len(held.samples):.1f} points, more than the default budgets (1-2 points), so its "
                   "verdicts and the fallback's choices are noisy; give --verify-data with a hundred samples or more")
        return calibration, held
    return calibration, random_holdout(onnx_model.spec)


def _representativeness(pipeline: Any, recipe: Recipe, plan: _Plan, onnx_model: Any, calibration: Any, held: Any,
                        report: Reporter) -> dict[str, Any] | None:
    """How well the calibrated ranges cover the held-out samples (clipped share per tensor, input shift); its
    warnings are printed. None when there is no INT8 build, no calibration data or no held-out data."""
    from edgec.benchmarks.representative import representativeness

    if not plan.needs_int8 or calibration is None or held is None:
        return None
    stats = pipeline.value("calibration_stats")
    record, warnings = representativeness(onnx_model.path, stats.ranges(), stats.method, calibration,
                                          held.samples, held.description, held.in_sample,
                                          len(held.samples) if held.split_from_calibration else 0)
    worst = record["worst"][0] if record["worst"] else None
    report(f"[calibration] {record['tensors_checked']} calibrated tensors on {held.description}: "
           f"{100 * record['mean_clipped']:.3f}% of values outside their range on average"
           + (f", most in '{worst['tensor']}' ({100 * worst['clipped']:.2f}%)" if worst and worst["clipped"] else ""))
    for line in warnings:
        report(f"warning: {line}")
    return record


def _tasks(recipe: Recipe, onnx_model: Any, held: Any, report: Reporter) -> list[Any]:
    """Each output's task: declared (--output-task, recipe outputs:), else inferred from the graph; printed."""
    import onnx

    from edgec.compiler.tasks import resolve_tasks

    model = onnx.load(str(onnx_model.path), load_external_data=False)
    tasks = resolve_tasks(onnx_model.spec, recipe.outputs, model, has_labels=held is not None and held.labels is not None)
    for t in tasks:
        report(f"[tasks] {t.describe()}")
    return tasks


def _verify(pipeline: Any, recipe: Recipe, plan: _Plan, builds: list[Any], onnx_model: Any, held: Any,
            tasks: list[Any], report: Reporter) -> list[tuple[str, dict[str, Any]]]:
    """Per build, the pipeline value holding the artifacts to ship, and what their metadata gains: the
    verification record, the latency against FP32 where the target runs on this host, and with
    --calibrate-confidence the temperatures."""
    from edgec.verification import Verifier

    if held is None:  # --no-verify, or only FP32 was built
        return [(b.stage, {"verification": "reference" if b.precision == Precision.FP32 else "skipped (--no-verify)"})
                for b in builds]
    verifier = Verifier(pipeline, onnx_model, held, tasks, plan.budget, report, fallback=recipe.fallback)
    shipped = []
    for b in builds:
        stage, record = verifier.verify(b) if b.precision != Precision.FP32 else (b.stage, "reference")
        extra: dict[str, Any] = {"verification": record}
        if b.precision != Precision.FP32 and b.target.timed_on_host:
            stage, extra["latency_check"], variant = verifier.check_latency(b, stage, record)
            extra["verification"] = variant or record
        if recipe.calibrate_confidence:
            extra["confidence"] = verifier.confidence(None if b.precision == Precision.FP32 else stage)
            for name, c in extra["confidence"].items():
                report(f"[confidence] {b.folder}/{b.precision.value} {name}: T = {c['temperature']:.3f}, ECE "
                       f"{c['ece_before']:.4f} -> {c['ece_after']:.4f} (FP32 {c['reference_ece']:.4f})")
                if c["ece_after"] > c["ece_before"]:
                    report(f"warning: {b.folder}/{b.precision.value} {name}: the temperature fitted on {c['fit_rows']} "
                           f"rows makes the ECE worse on the {c['held_rows']} it was judged on; do not apply it "
                           "(give more labelled --verify-data)")
        shipped.append((stage, extra))
    return shipped


def _manifest(recipe, plan, ckpt_sha, fmt, onnx_model, calibration, pipeline, artifacts, root) -> dict[str, Any]:
    records = pipeline.records
    calib_info = None
    if calibration is not None:
        calib_info = {"source": str(recipe.calib), "samples": len(calibration), "sha256": calibration.fingerprint}
        if getattr(calibration, "readings", None):
            calib_info["samples_stacked_on"] = calibration.readings
        stats = records.get("calibration_stats")
        if stats is not None:
            calib_info["method"] = recipe.calibration_method
            calib_info["tensors"] = stats.summary.get("tensors")
    return {
        "edgec_version": tool_versions().get("edgec"),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(plan.checkpoint.resolve()), "sha256": ckpt_sha, "format": fmt},
        **onnx_model.spec.to_dict(),
        "export": {**onnx_model.info, **records["export_check"].summary},
        "calibration": calib_info,
        **_compression_manifest(recipe, pipeline),
        "artifacts": [a.to_dict(root=root) for a in artifacts],
        "stages": [r.to_dict() for r in records.values()],
        "tool_versions": tool_versions(),
        "recipe": recipe.to_dict(),
    }


def _copy_tensorboard(pipeline: Pipeline, dest: Path, report: Reporter) -> None:
    """The distillation's TensorBoard logs, from its folder or, when it was not even restored, its cache entry."""
    from edgec.compiler.stages.distill import TENSORBOARD_DIR

    logs = pipeline.stage_dir("distilled_model") / TENSORBOARD_DIR
    if not logs.is_dir():
        hit = pipeline.ctx.cache.get(pipeline.key("distilled_model"))
        logs = hit[0] / TENSORBOARD_DIR if hit is not None else logs
    if logs.is_dir():
        shutil.copytree(logs, dest, dirs_exist_ok=True)
        report(f"TensorBoard logs in {dest}")


def _compression_manifest(recipe: Recipe, pipeline: Pipeline) -> dict[str, Any]:
    """The prune and distill settings and their before/after figures (absent when neither was asked for).

    When everything after them came from the cache they were not even restored: their figures are then
    read from their cache entries.
    """
    section: dict[str, Any] = {}
    for name, key in (("pruned_model", "prune"), ("distilled_model", "distill")):
        record = pipeline.records.get(name)
        if record is None:
            continue
        summary, cached = record.summary, record.cached
        if not record.ran and not summary:
            hit = pipeline.ctx.cache.get(record.key)
            if hit is not None:
                summary, cached = hit[1].get("summary", {}), True
        section[key] = {"settings": record.options, "cached": cached, **summary}
    if recipe.train_data:
        section["train_data"] = {"source": str(recipe.train_data), "labels": recipe.train_labels}
    return section


def _write_recipe(recipe: Recipe, path: Path) -> None:
    import yaml

    from edgec.recipe import path_keys

    data = recipe.to_dict()
    for key in path_keys():
        value = data.get(key)
        if isinstance(value, str) and Path(value).exists():
            data[key] = str(Path(value).resolve())
    path.write_text(
        "# The resolved recipe of this build: `edgec build --config recipe.yaml` repeats it.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


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
            _fix_input_dims(model, loaded.spec)
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
            "dynamic_inputs": [t.name for t in onnx_spec(model).inputs if t.is_dynamic],
            "ops": op_histogram(model),
        }


def _fix_input_dims(model: Any, spec: Any) -> None:
    """Set the ONNX graph's input dimensions to the fixed ones of ``spec`` (--input), in place, so shapes (and
    MACs) are inferred at that size."""
    fixed = {t.name: t.shape for t in spec.inputs}
    for vi in model.graph.input:
        shape = fixed.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if shape is None or len(shape) != len(dims):
            continue
        for d, value in zip(dims, shape):
            if isinstance(value, int):
                d.ClearField("dim_param")
                d.dim_value = value


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
    remote: str | None = None,
    identity: str | Path | None = None,
    remote_python: str | None = None,
    output_tasks: tuple[str, ...] = (),
):
    """Run ``edgec bench``: every artifact of a build (or one artifact) on its runtime, against a reference.

    The reference is, by default, the build's FP32 artifact (an exact export of the checkpoint, whose error
    against torch the manifest records); ``reference`` names a checkpoint (run in torch) or an ONNX file.
    """
    from edgec.benchmarks.harness import bench_artifacts, load_build
    from edgec.calibration_data import load_dataset

    if iterations is not None and duration is not None:
        raise ConfigError("--iterations and --duration exclude each other", hint="give one of them")
    artifacts, manifest = load_build(path)
    spec = artifacts[0].spec
    evaluation = load_dataset(data, spec, samples=samples, seed=seed, role="evaluation", labels=labels)
    report(f"[data] {len(evaluation)} evaluation samples from {data}")
    _apply_tasks(artifacts, output_tasks, labels is not None, report)
    ref_fn, ref_artifact, ref_name = _reference(
        reference, manifest, artifacts, inputs, model_factory, trust_checkpoint, report,
        prefer_checkpoint=False,
    )
    if remote:
        from edgec.benchmarks.remote import bench_remote

        return bench_remote(
            path, remote, evaluation.samples, identity=identity, remote_python=remote_python, reference=ref_fn,
            reference_artifact=ref_artifact, labels=getattr(evaluation, "labels", None), warmup=warmup,
            iterations=iterations, duration=duration, threads=threads, progress=report, reference_name=ref_name,
            data_source=str(data),
        )
    results = bench_artifacts(
        artifacts, evaluation.samples, reference=ref_fn, reference_artifact=ref_artifact,
        labels=getattr(evaluation, "labels", None), warmup=warmup, iterations=iterations, duration=duration,
        threads=threads, progress=report, reference_name=ref_name, data_source=str(data),
    )
    return results


def compare(
    path: Path | list[Path],
    data: str,
    *,
    labels: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    reference: str | None = None,
    inputs=(),
    model_factory: str | None = None,
    trust_checkpoint: bool = False,
    only: tuple[str, ...] = (),
    layer_samples: int = 8,
    jump_ratio: float | None = None,
    jump_min_increase: float | None = None,
    threads: int = 1,
    report: Reporter = silent_reporter,
    output_tasks: tuple[str, ...] = (),
):
    """Run ``edgec compare``: the same inputs through the reference (by default the build's checkpoint in torch)
    and every artifact; each reduced-precision ONNX or TFLite artifact also walked layer by layer against
    FP32."""
    from edgec.benchmarks import compare as cmp
    from edgec.benchmarks.harness import load_build
    from edgec.calibration_data import load_dataset

    if layer_samples < 0:
        raise ConfigError(f"--layer-samples must be 0 or more, not {layer_samples}")
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    artifacts, manifest = load_build(paths[0])
    for other in paths[1:]:
        more, other_manifest = load_build(other)
        if other_manifest.get("checkpoint", {}).get("sha256") != manifest.get("checkpoint", {}).get("sha256"):
            raise ConfigError(
                f"'{other}' was built from another checkpoint than '{paths[0]}'",
                hint="compare builds of the same checkpoint",
            )
        artifacts += [a for a in more if a.name not in {b.name for b in artifacts}]
    if only:
        known = {a.name for a in artifacts}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ConfigError(
                f"no artifact {', '.join(repr(n) for n in unknown)} in '{', '.join(map(str, paths))}'",
                hint=f"artifacts in the build: {', '.join(sorted(known))}",
            )
        artifacts = [a for a in artifacts if a.name in only]
    spec = artifacts[0].spec
    evaluation = load_dataset(data, spec, samples=samples, seed=seed, role="evaluation", labels=labels)
    report(f"[data] {len(evaluation)} samples from {data}")
    _apply_tasks(artifacts, output_tasks, labels is not None, report)
    ref_fn, ref_artifact, ref_name = _reference(
        reference, manifest, artifacts, inputs, model_factory, trust_checkpoint, report, prefer_checkpoint=True,
    )
    jumps = {}
    if jump_ratio is not None:
        jumps["jump_ratio"] = jump_ratio
    if jump_min_increase is not None:
        jumps["jump_min_increase"] = jump_min_increase
    return cmp.compare_build(
        artifacts, evaluation.samples, reference=ref_fn, reference_artifact=ref_artifact, reference_name=ref_name,
        labels=getattr(evaluation, "labels", None), layer_samples=layer_samples, threads=threads, say=report,
        **jumps,
    )


def _apply_tasks(artifacts: list[Artifact], declared: tuple[str, ...], has_labels: bool, report: Reporter) -> None:
    """Each output's task, for scoring: what the build recorded, with ``--output-task`` declarations over it;
    for artifacts without a record (a lone .onnx file), inferred from the ONNX graph. Printed."""
    from edgec.compiler.tasks import OutputTask, resolve_tasks

    recorded = artifacts[0].metadata.get("tasks")
    if recorded and not declared:
        tasks = [OutputTask.from_dict(t) for t in recorded]
    else:
        import onnx

        spec = artifacts[0].spec
        onnx_file = next((a.path for a in artifacts if a.format == ModelFormat.ONNX), None)
        model = onnx.load(str(onnx_file), load_external_data=False) if onnx_file else None
        kept = {t["output"]: {"task": t["task"], **t.get("options", {})} for t in recorded or ()
                if t.get("source") == "declared"}
        decl = {**kept, **dict(d.partition("=")[::2] for d in declared)}
        tasks = resolve_tasks(spec, decl, model, has_labels=has_labels)
    for t in tasks:
        report(f"[tasks] {t.describe()}")
    for a in artifacts:
        a.metadata["tasks"] = [t.to_dict() for t in tasks]


def _reference(
    reference: str | None,
    manifest: dict[str, Any],
    artifacts: list[Artifact],
    inputs=(),
    model_factory: str | None = None,
    trust_checkpoint: bool = False,
    report: Reporter = silent_reporter,
    *,
    prefer_checkpoint: bool,
) -> tuple[Any, Any, str | None]:
    """(torch reference function, reference artifact, its name): ``reference`` when given; else the build's
    checkpoint when ``prefer_checkpoint`` or when the build has no FP32 artifact; else neither (the harness then
    uses each artifact's FP32 sibling)."""
    from edgec.benchmarks.harness import load_build
    from edgec.compiler.modelio import torch_run
    from edgec.compiler.stages.load import detect_format, load_checkpoint

    spec = artifacts[0].spec
    checkpoint = manifest.get("checkpoint", {}).get("path")
    if not reference and checkpoint and (
        prefer_checkpoint or not any(a.precision == Precision.FP32 for a in artifacts)
    ):
        if Path(checkpoint).is_file():
            reference = checkpoint
            why = "" if prefer_checkpoint else "no FP32 artifact in the build: "
            report(f"[reference] {why}using the checkpoint {checkpoint}")
        elif prefer_checkpoint:
            report(f"[reference] the build's checkpoint {checkpoint} is not here: using the FP32 artifacts")
    if not reference:
        return None, None, None
    ref_path = Path(reference)
    if not ref_path.is_file():
        raise InputFileError(f"--reference '{reference}' does not exist", hint="pass a checkpoint or an ONNX file")
    if detect_format(ref_path) == "onnx":
        return None, load_build(ref_path)[0][0], None
    recipe = manifest.get("recipe", {})
    specs = tuple(TensorSpec.parse(s) for s in (inputs or recipe.get("inputs") or ()))
    loaded = load_checkpoint(
        ref_path, specs, model_factory or recipe.get("model_factory"),
        trust_checkpoint or bool(recipe.get("trust_checkpoint")),
    )
    in_names = spec.input_names
    out_names = [t.name for t in spec.outputs]

    def torch_reference(feeds):
        return dict(zip(out_names, torch_run(loaded.module, feeds, in_names)))

    return torch_reference, None, f"torch ({ref_path.name})"
