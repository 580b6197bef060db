"""The harness: run each artifact on its own runtime, time it, and compare its outputs with a reference.

Targets are reached only through the registry and the Runner interface, so a new backend needs no change here.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgec.benchmarks.accuracy import compare_outputs
from edgec.benchmarks.device import MANIFEST
from edgec.benchmarks.latency import (
    DEFAULT_ITERATIONS,
    LatencyStats,
    MemorySampler,
    batch_size,
    measure_latency,
    side_by_side,
    summarize,
    timed_call,
)
from edgec.benchmarks.results import BenchResults, RunResult, build_records, environment, now_iso
from edgec.compiler.context import silent_reporter, track
from edgec.compiler.errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    InputFileError,
    missing_dependency,
)
from edgec.compiler.types import Artifact, Feeds, InputSpec, ModelFormat, Precision, sha256_file
from edgec.targets.base import Runner
from edgec.targets.registry import target_class

Outputs = dict[str, np.ndarray]
Progress = Callable[[str], None]

_FORMAT_BY_SUFFIX = {".onnx": (ModelFormat.ONNX, "onnxruntime")}


def _as_numpy(value: Any) -> np.ndarray:
    # A torch tensor (from a checkpoint reference) converts without importing torch here.
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _outputs_to_numpy(outputs: Mapping[str, Any], where: str) -> Outputs:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{where} returned {type(outputs).__name__}, not a dict of outputs by name")
    return {name: _as_numpy(v) for name, v in outputs.items()}


def _adapt_feeds(feeds: Feeds, runner_spec: InputSpec, data_spec: InputSpec | None = None) -> Feeds:
    """Feeds laid out as ``data_spec`` (the evaluation data) made to fit what the runner expects: the device
    runner's ``adapt_feeds`` (one implementation, shipped to devices), with the specs' names, dtypes and layouts.

    Inputs are matched by name, or by position when the names differ but the counts agree. A 4-D float input
    whose layout differs (NCHW vs NHWC) is transposed; a float input is cast to the runner's float dtype.
    """
    from edgec.benchmarks.device import DeviceRunError, adapt_feeds

    wanted = list(runner_spec.inputs)
    if not wanted:
        return dict(feeds)
    layouts = {t.name: t.layout for t in wanted if t.layout}
    data_layouts = {t.name: t.layout for t in data_spec.inputs if t.layout} if data_spec is not None else {}
    try:
        return adapt_feeds(feeds, [(t.name, t.dtype) for t in wanted], layouts, data_layouts, np)
    except DeviceRunError:
        missing = [t.name for t in wanted if t.name not in feeds]
        raise CalibrationError(
            f"the evaluation data has inputs {list(feeds)}; the artifact needs {[t.name for t in wanted]} "
            f"(missing: {missing})",
            hint="give evaluation samples with the model's input names",
        ) from None


def _match_outputs(reference_names: list[str], candidate_names: list[str], artifact: str) -> dict[str, str]:
    """Candidate output name -> reference output name: by name, else by position when the counts agree."""
    if all(n in candidate_names for n in reference_names):
        return {n: n for n in reference_names}
    if len(reference_names) == len(candidate_names):
        return dict(zip(candidate_names, reference_names))
    raise CheckpointError(
        f"{artifact} has outputs {candidate_names}, the reference has {reference_names}",
        hint="use artifacts built from the reference model (same outputs by name, or in the same order)",
    )


def _rename(outputs: list[Outputs], mapping: dict[str, str]) -> list[Outputs]:
    return [{ref: out[cand] for cand, ref in mapping.items()} for out in outputs]


def open_runner(artifact: Artifact, threads: int | None = None) -> Runner:
    """The artifact's runner, through the registry (not loaded yet)."""
    if not Path(artifact.path).exists():
        raise InputFileError(
            f"artifact '{artifact.path}' ({artifact.name}) not found", hint="rebuild it with: edgec build ..."
        )
    return target_class(artifact.target).open(artifact, threads=threads)


def run_outputs(
    artifact: Artifact, eval_feeds: list[Feeds], threads: int | None = 1, output_names: list[str] | None = None,
    say: Any = silent_reporter,
) -> tuple[list[Outputs], str]:
    """The artifact's outputs for each sample (renamed like ``output_names`` when given: by name, else by
    position), and the runtime that ran it. No timing."""
    with open_runner(artifact, threads) as runner:
        feeds_list = [_adapt_feeds(f, runner.input_specs(), artifact.spec) for f in eval_feeds]
        outputs = _run_all(runner, feeds_list, artifact, say)
        runtime = runner.runtime
    if output_names is not None:
        outputs = _rename(outputs, _match_outputs(output_names, list(outputs[0]), artifact.name))
    return outputs, runtime


def _run_all(
    runner: Runner, feeds_list: list[Feeds], artifact: Artifact, say: Any = silent_reporter
) -> list[Outputs]:
    return [
        _outputs_to_numpy(runner.infer(f), artifact.name) for f in track(say, f"{artifact.name}: samples", feeds_list)
    ]


def _default_reference(artifact: Artifact, artifacts: list[Artifact]) -> Artifact | None:
    fp32 = [a for a in artifacts if a.precision == Precision.FP32]
    same_target = [a for a in fp32 if a.target == artifact.target]
    return (same_target or fp32 or [None])[0]


def _bench_one(
    artifact: Artifact,
    eval_feeds: list[Feeds],
    *,
    warmup: int,
    iterations: int | None,
    duration: float | None,
    threads: int,
    say: Progress,
) -> tuple[RunResult, list[Outputs]]:
    started = now_iso()
    gc.collect()
    say(f"{artifact.name}: loading {Path(artifact.path).name}")
    with contextlib.ExitStack() as stack:
        # Peak memory is sampled while the runtime loads and warms up, not in the timed loop: the sampler's
        # thread would compete with the calls it times (a few % on a model that runs in microseconds).
        with MemorySampler() as memory:
            runner = stack.enter_context(open_runner(artifact, threads))
            feeds_list = [_adapt_feeds(f, runner.input_specs(), artifact.spec) for f in eval_feeds]
            budget = (
                f"{duration:g} s"
                if duration is not None
                else f"{iterations or DEFAULT_ITERATIONS} iterations"
            )
            say(f"{artifact.name}: timing ({warmup} warm-up, {budget})")
            if warmup < 0:
                raise ConfigError(f"warmup must be 0 or more, not {warmup}")
            call = timed_call(runner)
            for i in range(warmup):
                call(feeds_list[i % len(feeds_list)])
        stats = measure_latency(runner, feeds_list, warmup=0, iterations=iterations, duration=duration)
        stats.warmup = warmup
        # Runtimes that can time the accelerator itself (CUDA events for TensorRT) report that beside the host time.
        time_device = getattr(runner, "time_device", None)
        device_latency = None
        if callable(time_device):
            say(f"{artifact.name}: timing on the device")
            device_latency = time_device(feeds_list[0], warmup, iterations or DEFAULT_ITERATIONS)
        say(f"{artifact.name}: running {len(feeds_list)} evaluation samples")
        outputs = _run_all(runner, feeds_list, artifact, say)
        runtime = runner.runtime
    stats.peak_rss_bytes = memory.peak_bytes
    stats.peak_rss_delta_bytes = memory.delta_bytes
    path = Path(artifact.path)
    result = RunResult(
        name=artifact.name,
        path=str(path),
        format=artifact.format.value,
        precision=artifact.precision.value,
        target=artifact.target,
        runtime=runtime,
        size_bytes=path.stat().st_size,
        sha256=artifact.sha256 or sha256_file(path),
        threads=threads,
        latency=stats,
        device_latency=device_latency,
        environment=environment(runtime),
        started_at=started,
        build=build_records(artifact.metadata),
    )
    say(f"{artifact.name}: p50 {stats.p50_ms:.3f} ms, {stats.throughput_per_s:.1f}/s")
    return result, outputs


def bench_artifacts(
    artifacts: list[Artifact],
    eval_feeds: list[Feeds],
    *,
    reference: Callable[[Feeds], Mapping[str, Any]] | None = None,
    reference_artifact: Artifact | None = None,
    labels: Any = None,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    threads: int = 1,
    progress: Progress | None = None,
    reference_name: str | None = None,
    data_source: str = "",
) -> BenchResults:
    """Benchmark each artifact: latency and peak memory on its runtime, and accuracy against a reference.

    Args:
        artifacts: what to benchmark, in report order.
        eval_feeds: evaluation samples, laid out like the artifacts' spec; they also drive the timed loop.
        reference: a function giving the reference outputs (by name) for one sample, e.g. the torch model.
        reference_artifact: an artifact whose outputs are the reference. Without either, each artifact is
            compared with the FP32 artifact of its target in ``artifacts``, else the first FP32 one; with no
            FP32 artifact at all, accuracy is left out.
        labels: one integer label per sample (per row of batched samples), for task accuracy.
        warmup, iterations, duration: as for ``measure_latency``.
        threads: intra-op threads for each runner.
        progress: called with a line of text at each step.
        reference_name: how to describe ``reference`` in the results (default "reference function").
        data_source: where the evaluation samples came from, for the results.
    """
    if not artifacts:
        raise ConfigError("no artifacts to benchmark", hint="pass a build folder or an artifact file")
    if not eval_feeds:
        raise CalibrationError("no evaluation samples", hint="pass evaluation data with at least one sample")
    if reference is not None and reference_artifact is not None:
        raise ConfigError("give a reference function or a reference artifact, not both")
    say = progress or (lambda _msg: None)

    runs: list[RunResult] = []
    outputs: dict[int, list[Outputs]] = {}
    for i, artifact in enumerate(artifacts):
        run, outs = _bench_one(
            artifact,
            eval_feeds,
            warmup=warmup,
            iterations=iterations,
            duration=duration,
            threads=threads,
            say=say,
        )
        runs.append(run)
        outputs[i] = outs

    described = score_runs(
        artifacts, runs, [outputs[i] for i in range(len(artifacts))], eval_feeds, reference=reference,
        reference_artifact=reference_artifact, reference_name=reference_name, labels=labels, threads=threads, say=say,
    )

    return BenchResults(
        runs=runs,
        reference=described,
        data_source=data_source,
        samples=len(eval_feeds),
        metadata={"warmup": warmup, "iterations": iterations, "duration_s": duration, "threads": threads},
    )


def interleaved_latency(
    artifacts: list[Artifact],
    eval_feeds: list[Feeds],
    *,
    rounds: int = 3,
    warmup: int = 5,
    iterations: int = 50,
    threads: int = 1,
) -> list[LatencyStats]:
    """Latency of several artifacts measured side by side: all loaded at once, then timed in alternating blocks
    of a few milliseconds (``latency.side_by_side``) until each made ``rounds`` x ``iterations`` calls (after
    ``warmup`` untimed ones). A machine's slow phases (another process, clock changes) then fall on every artifact
    alike instead of on whichever ran during them."""
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, not {rounds}")
    if not eval_feeds:
        raise CalibrationError("no inputs to time the models with", hint="give at least one evaluation sample")
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(open_runner(a, threads)) for a in artifacts]
        feeds = {i: [_adapt_feeds(f, r.input_specs(), a.spec) for f in eval_feeds]
                 for i, (a, r) in enumerate(zip(artifacts, runners))}
        times, _ = side_by_side({i: timed_call(r) for i, r in enumerate(runners)}, feeds,
                                calls_per_side=rounds * iterations, warmup=warmup)
    return [summarize(times[i], batch=batch_size(feeds[i][0]), warmup=warmup) for i in range(len(artifacts))]


def score_runs(
    artifacts: list[Artifact],
    runs: list[RunResult],
    outputs: list[list[Outputs]],
    eval_feeds: list[Feeds],
    *,
    reference: Callable[[Feeds], Mapping[str, Any]] | None = None,
    reference_artifact: Artifact | None = None,
    reference_name: str | None = None,
    labels: Any = None,
    threads: int = 1,
    say: Progress = lambda _msg: None,
    default_name: Callable[[Artifact], str] = lambda a: f"{a.name} ({Path(a.path).name})",
) -> str:
    """Fill ``runs[i].accuracy`` by comparing ``outputs[i]`` (artifact i's outputs per sample) with its reference.

    The reference is ``reference`` (a function run here), else ``reference_artifact``, else each artifact's FP32
    sibling (``_default_reference``); an artifact in the list reuses its outputs, any other runs here once.
    ``default_name`` names a reference artifact when ``reference_name`` is not given. Returns the description of
    the references used, for the results.
    """
    label_arr = None if labels is None else np.asarray(labels)
    if reference is not None:
        say(f"running the reference on {len(eval_feeds)} samples")
        ref_outputs = [_outputs_to_numpy(reference(f), "the reference") for f in eval_feeds]
        described = reference_name or "reference function"
        refs = {i: (ref_outputs, described) for i in range(len(artifacts))}
    else:
        refs = {}
        cache: dict[int, list[Outputs]] = {}
        for i, artifact in enumerate(artifacts):
            ref_art = reference_artifact or _default_reference(artifact, artifacts)
            if ref_art is None:
                continue
            key = next((j for j, a in enumerate(artifacts) if a is ref_art or a.path == ref_art.path), -1)
            if key >= 0:
                runs[key].is_reference = True
                ref_outs = outputs[key]
            else:
                if id(ref_art) not in cache:
                    say(f"{ref_art.name}: running the reference artifact on {len(eval_feeds)} samples")
                    with open_runner(ref_art, threads) as runner:
                        fl = [_adapt_feeds(f, runner.input_specs(), ref_art.spec) for f in eval_feeds]
                        cache[id(ref_art)] = _run_all(runner, fl, ref_art)
                ref_outs = cache[id(ref_art)]
            refs[i] = (ref_outs, reference_name or default_name(ref_art))
        described = ", ".join(sorted({name for _, name in refs.values()}))

    for i, artifact in enumerate(artifacts):
        if i not in refs:
            continue
        ref_outs, ref_name = refs[i]
        ref_names = list(ref_outs[0])
        mapping = _match_outputs(ref_names, list(outputs[i][0]), artifact.name)
        runs[i].accuracy = compare_outputs(
            ref_outs, _rename(outputs[i], mapping), labels=label_arr, output_names=ref_names,
            reference_name=ref_name, tasks=artifact_tasks(artifact),
            temperatures={k: c["temperature"] for k, c in (artifact.metadata.get("confidence") or {}).items()},
        )
    return described


def artifact_tasks(artifact: Artifact) -> list[Any] | None:
    """The output tasks the build recorded for ``artifact`` (``load_build`` puts the manifest's there), or None."""
    from edgec.compiler.tasks import OutputTask

    recorded = artifact.metadata.get("tasks")
    return [OutputTask.from_dict(t) for t in recorded] if recorded else None


def _guess_precision(name: str) -> Precision:
    lowered = name.lower()
    if "fp16" in lowered:
        return Precision.FP16
    if "int8" in lowered:
        return Precision.INT8
    return Precision.FP32


def _single_artifact(path: Path) -> Artifact:
    suffix = path.suffix.lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        raise InputFileError(
            f"cannot benchmark '{path}' on its own: edgec guesses the runtime only for "
            f"{', '.join(sorted(_FORMAT_BY_SUFFIX))} files",
            hint="pass the build folder (with its manifest.json) that the artifact came from",
        )
    fmt, target = _FORMAT_BY_SUFFIX[suffix]
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "onnx", f"reading '{path.name}'") from None
    from edgec.compiler.stages.load import onnx_spec

    try:
        spec = onnx_spec(onnx.load(str(path), load_external_data=False))
    except Exception as exc:
        raise InputFileError(
            f"cannot read ONNX file '{path}': {exc}", hint="pass a valid .onnx file"
        ) from None
    return Artifact(path, fmt, _guess_precision(path.name), target, spec, sha256_file(path), {})


def load_build(path: str | Path) -> tuple[list[Artifact], dict[str, Any]]:
    """The artifacts of a build folder (its manifest.json), or of a single artifact file, and the manifest.

    For a single file the manifest is a small dict naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(
            f"'{path}' not found", hint="pass a build folder written by edgec build, or a .onnx file"
        )
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if path.is_file():
        artifact = _single_artifact(path)
        return [artifact], {"artifacts": [artifact.to_dict()], "source": str(path)}
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputFileError(
            f"'{path}' has no {MANIFEST}, so it is not a build folder",
            hint="pass the folder edgec build wrote (with --out), or a single .onnx file",
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(
            f"cannot read '{manifest_path}': {exc}", hint="rebuild with: edgec build ..."
        ) from None
    entries = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise InputFileError(f"'{manifest_path}' lists no artifacts", hint="rebuild with: edgec build ...")
    artifacts = []
    for d in entries:
        try:
            artifact = Artifact.from_dict(d, root=path)
        except (KeyError, ValueError, TypeError) as exc:
            raise InputFileError(
                f"'{manifest_path}' has an unreadable artifact entry ({type(exc).__name__}: {exc})",
                hint="rebuild with this edgec version: edgec build ...",
            ) from None
        if not artifact.path.exists():
            raise InputFileError(
                f"artifact '{artifact.path}' listed in '{manifest_path}' is missing",
                hint="rebuild with: edgec build ...",
            )
        if manifest.get("tasks"):
            artifact.metadata["tasks"] = manifest["tasks"]
        artifacts.append(artifact)
    return artifacts, manifest
