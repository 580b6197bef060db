"""Build-time verification of every compressed artifact, and the per-target fallback that repairs it.

After the targets have built, each FP16/INT8 artifact runs on its own runtime over held-out samples (a seeded
part of the calibration data kept out of calibration, or ``--verify-data``) beside the FP32 export, and is
judged in its outputs' task terms against the accuracy budget (``edgec.benchmarks.verify``). An INT8 artifact
over budget goes to the fallback: the layers that add the most error are ranked once for the build
(``edgec.benchmarks.sensitivity``), and its target keeps the fewest of them in higher precision (its own
mechanism: float nodes, FP32 islands, float ops) until the artifact is within budget. One that no fallback
repairs fails the build (exit 4), naming the artifact, the metric and the layers tried.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgec.benchmarks.verify import Budget, Verdict, judge
from edgec.compiler.cache import hash_key
from edgec.compiler.context import Reporter
from edgec.compiler.errors import EdgecError, QuantizationError
from edgec.compiler.tasks import OutputTask
from edgec.compiler.types import (
    ArrayCalibrationSet,
    Artifact,
    CalibrationSet,
    Feeds,
    ModelFormat,
    OnnxModel,
    Precision,
)

#: The held-out share of the calibration data, and its bounds in samples.
HOLDOUT_FRACTION = 0.2
HOLDOUT_MIN, HOLDOUT_MAX = 4, 64
#: Below this many calibration samples nothing is held out: verification then runs on calibration samples.
MIN_TO_SPLIT = 10
#: Samples of random inputs when there is no data at all (an FP16-only build without --calib).
RANDOM_SAMPLES = 8
#: An artifact is "slower than FP32" above this latency ratio (timing on a shared machine is noisy by a few %).
SLOWER = 1.03
#: A fallback that keeps this share of the quantized layers or more in higher precision is warned about.
MOSTLY_KEPT = 0.5
#: A faster variant ships only when it beats the artifact by this share.
MARGIN = 0.05
#: Seconds of side-by-side timing a latency check spends.
LATENCY_BUDGET_S = 0.6


@dataclasses.dataclass
class HeldOut:
    """What verification runs on."""

    samples: list[Feeds]
    description: str  # for messages: "12 held-out calibration samples"
    labels: np.ndarray | None = None
    in_sample: bool = False  # the samples were also used to calibrate
    split_from_calibration: bool = False  # the samples were taken out of the calibration set

    def to_dict(self) -> dict[str, Any]:
        return {"samples": len(self.samples), "source": self.description, "labels": self.labels is not None,
                "also_calibration": self.in_sample}


def split_holdout(calibration: CalibrationSet, seed: int) -> tuple[CalibrationSet, HeldOut]:
    """Keep a seeded part of ``calibration`` out of it, for verification; the rest calibrates."""
    samples = list(calibration)
    labels = getattr(calibration, "labels", None)
    n = len(samples)
    if n < MIN_TO_SPLIT:
        return calibration, HeldOut(samples, f"the {n} calibration samples (too few to hold any out)", labels,
                                    in_sample=True)
    count = min(HOLDOUT_MAX, max(HOLDOUT_MIN, round(HOLDOUT_FRACTION * n)))
    held = set(np.random.default_rng(seed).permutation(n)[:count].tolist())
    keep = [s for i, s in enumerate(samples) if i not in held]
    rest = ArrayCalibrationSet(keep, source=getattr(calibration, "source", "<memory>"))
    rest.readings = dict(getattr(calibration, "readings", {}))
    order = sorted(held)
    held_labels = None if labels is None else np.asarray(labels)[order]
    return rest, HeldOut([samples[i] for i in order], f"{count} held-out calibration samples", held_labels,
                         split_from_calibration=True)


def random_holdout(spec: Any) -> HeldOut:
    return HeldOut([spec.example_feeds(seed=i) for i in range(RANDOM_SAMPLES)],
                   f"{RANDOM_SAMPLES} random inputs (pass --calib or --verify-data for a real check)")


class VerificationFailed(QuantizationError):
    """A compressed artifact breaks the accuracy budget and no fallback repairs it."""


@dataclasses.dataclass
class Build:
    """One target build of one precision, as the pipeline made it."""

    stage: str  # the pipeline value holding its artifacts
    folder: str
    target: Any
    precision: Precision


class Verifier:
    """Verifies the builds of one ``edgec build`` and runs the fallback where one is over budget."""

    def __init__(self, pipeline: Any, onnx_model: OnnxModel, held: HeldOut, tasks: list[OutputTask],
                 budget: Budget, report: Reporter, fallback: bool = True):
        self.pipeline = pipeline
        self.onnx_model = onnx_model
        self.held = held
        self.tasks = tasks
        self.budget = budget
        self.report = report
        self.fallback = fallback
        self._reference: list[dict[str, np.ndarray]] | None = None
        self._ranking: list[Any] | None = None
        self._outputs: dict[str, list[dict[str, np.ndarray]]] = {}  # artifact name -> outputs, last verified

    # ---- the pieces

    @property
    def reference(self) -> list[dict[str, np.ndarray]]:
        """The FP32 export's outputs on the held-out samples (ONNX Runtime; its difference from the source model
        is what the export check records)."""
        if self._reference is None:
            from edgec.benchmarks.harness import run_outputs

            fp32 = Artifact(self.onnx_model.path, ModelFormat.ONNX, Precision.FP32, "onnxruntime", self.onnx_model.spec)
            self._reference = run_outputs(fp32, self.held.samples)[0]
        return self._reference

    def verdict(self, artifact: Artifact, stage: str) -> Verdict:
        from edgec.benchmarks.harness import run_outputs

        names = list(self.reference[0])
        outputs = run_outputs(artifact, self.held.samples, output_names=names)[0]
        self._outputs[stage] = outputs
        return judge(artifact.name, self.tasks, self.reference, outputs, self.budget, data=self.held.description,
                     labels=self.held.labels)

    def confidence(self, stage: str | None) -> dict[str, Any]:
        """Per classification output, a temperature fitted on half of the labelled held-out samples and the ECE
        it gives on the other half, for the artifacts verified as ``stage`` (None: the FP32 reference)."""
        from edgec.benchmarks.metrics import confidence_calibration

        outputs = self.reference if stage is None else self._outputs[stage]
        labels = np.asarray(self.held.labels)
        fit, held = list(range(0, len(outputs), 2)), list(range(1, len(outputs), 2))
        per_sample = len(labels) // len(outputs)  # label rows per sample (a batched sample has several)

        def rows(idx: list[int]) -> np.ndarray:
            return np.concatenate([labels[i * per_sample:(i + 1) * per_sample] for i in idx])

        found = {}
        for task in self.tasks:
            if task.task != "classification":
                continue
            found[task.output] = confidence_calibration(
                task, [outputs[i][task.output] for i in fit], rows(fit), [outputs[i][task.output] for i in held],
                rows(held), [self.reference[i][task.output] for i in held],
            )
        return found

    def ranking(self, artifact: Artifact) -> list[Any]:
        """The layers of the FP32 export by the error quantizing them adds, worst first: measured on the artifact
        itself when it is an ONNX model, else (a .tflite) once per build on a fully quantized (S8S8,
        per-channel) QDQ model of the export standing in for it."""
        from edgec.benchmarks.sensitivity import rank_layers

        if artifact.format == ModelFormat.ONNX:
            self.report(f"[fallback] {artifact.name}: ranking its quantized layers by the error each adds")
            return rank_layers(self.onnx_model.path, artifact.path, self.held.samples)
        if self._ranking is None:
            from edgec.targets.qdq import quantize_qdq

            self.report("[fallback] ranking layers by the error INT8 adds, on a QDQ model of the export")
            stats = self.pipeline.value("calibration_stats")
            with tempfile.TemporaryDirectory(prefix="edgec-sensitivity-") as tmp:
                qdq = Path(tmp) / "all.int8.onnx"
                quantize_qdq(stats, self.onnx_model.path, qdq, activation="int8", per_channel=True,
                             extra={"ActivationSymmetric": True, "WeightSymmetric": True},
                             purpose="INT8 sensitivity analysis")
                self._ranking = rank_layers(self.onnx_model.path, qdq, self.held.samples)
        return self._ranking

    # ---- the loop

    def verify(self, build: Build) -> tuple[str, dict[str, Any]]:
        """Verify one build; returns the pipeline value holding the artifacts to ship (a fallback's, when one
        was needed) and the record for their metadata. Raises VerificationFailed when nothing passes."""
        (artifact,) = self.pipeline.value(build.stage)[:1]
        verdict = self.verdict(artifact, build.stage)
        self.report(f"[verify] {verdict.line()}")
        record: dict[str, Any] = {**verdict.to_dict(), "budget": self.budget.to_dict()}
        if verdict.passed:
            return build.stage, record
        if build.precision != Precision.INT8:
            raise self._failure(verdict, "no fallback exists for this precision", [])
        if not self.fallback:
            worst = [s.node for s in self.ranking(artifact)[:3]]
            raise self._failure(verdict, "--no-fallback: the layers adding the most error are listed", worst)
        return self._fallback(build, artifact, verdict, record)

    def _fallback(self, build: Build, artifact: Artifact, verdict: Verdict,
                  record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from edgec.benchmarks.sensitivity import groups, search
        from edgec.compiler.stages.target import TargetStage

        ranking = self.ranking(artifact)
        nodes = [s.node for s in ranking]
        if not nodes:
            raise self._failure(verdict, "no layer adds measurable error: the loss is spread over the whole model",
                                [])
        if build.target.keep_in_higher_precision(nodes[:1]) is None:
            worst = ", ".join(f"'{s.node}' ({s.op_type}, +{s.increase:.3f})" for s in ranking[:3])
            raise self._failure(verdict, f"this target has no higher precision to keep layers in; the layers "
                                f"adding the most error: {worst}", nodes[:3])

        seen: dict[str, tuple[Verdict, str]] = {}

        def attempt(keep: list[str]) -> tuple[Verdict, str]:
            variant = "keep-" + hash_key(sorted(keep))[:8]
            if variant in seen:
                return seen[variant]
            target = build.target.keep_in_higher_precision(keep)
            name = self.pipeline.add(TargetStage(target, build.folder, build.precision,
                                                 source=self._source_name(build), variant=variant))
            self.report(f"[fallback] {build.folder}/{build.precision.value}: keeping {len(keep)} layer(s) in "
                        f"higher precision ({', '.join(keep[:4])}{', ...' if len(keep) > 4 else ''})")
            try:
                (artifact,) = self.pipeline.value(name)[:1]
            except EdgecError as exc:  # e.g. nothing left to quantize: a failed attempt, not the build's end
                result = Verdict(f"{build.target.name}/{build.precision.value}", self.held.description,
                                 len(self.held.samples), {}, [f"this attempt did not build: {exc.message}"])
                self.report(f"[verify] {result.line()}")
                seen[variant] = (result, name)
                return seen[variant]
            result = self.verdict(artifact, name)
            self.report(f"[verify] {result.line()}")
            seen[variant] = (result, name)
            return seen[variant]

        found, tried = search(groups(ranking), attempt)
        record["fallback"] = {
            "ranking": [s.to_dict() for s in ranking[:20]],
            "attempts": [a.to_dict() for a in tried],
            "kept": found.kept if found else None,
            "kept_as": build.target.higher_precision,
        }
        if found is None:
            layers = sorted({n for a in tried for n in a.kept}, key=nodes.index)
            built = [a for a in tried if a.verdict.metrics]  # attempts that built and ran
            most = max(built, key=lambda a: len(a.kept)) if built else None
            unbuilt = [a for a in tried if not a.verdict.metrics and len(a.kept) > (len(most.kept) if most else 0)]
            why = (f"keeping up to {len(most.kept)} layer(s) in higher precision did not bring it within budget "
                   "(the figures are that attempt's)" if most else "no attempt built")
            if unbuilt:
                reason = unbuilt[-1].verdict.breaches[0].removeprefix("this attempt did not build: ")
                why += f"; keeping {len(unbuilt[-1].kept)} did not build: {reason}"
            raise self._failure(most.verdict if most else verdict, why, layers)
        kept = len(set(found.kept) & set(nodes))
        record["fallback"]["kept_share"] = round(kept / len(nodes), 3)
        if kept / len(nodes) >= MOSTLY_KEPT:
            self.report(f"warning: {build.folder}/{build.precision.value} holds its budget only with {kept} of its "
                        f"{len(nodes)} quantized layers kept in {build.target.higher_precision}: little of it is "
                        f"{build.precision.value.upper()}; build -p fp16 or -p fp32 for this target if that serves "
                        "as well")
        final = found.verdict
        return found.outcome, {**final.to_dict(), "budget": self.budget.to_dict(), "before_fallback":
                               verdict.to_dict(), "fallback": record["fallback"]}

    # ---- latency: never slower than FP32 without saying so

    def check_latency(self, build: Build, stage: str,
                      verified: Any = None) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """Time the verified artifact against the FP32 export on its runtime, side by side, where the target's
        runtime is this host's. An INT8 artifact slower than FP32 whose runtime left ops between a dequantize and a
        quantize (a PReLU ONNX Runtime has no int8 kernel for) gets one more try with those ops and the weighted
        layers feeding them in float: the requantization can cost more than the int8 kernels save. That variant
        ships when it is within budget and faster. Either way, an artifact that stays slower than FP32 is said so.
        Where ``verified`` (the artifact's verification record) says the fallback kept layers, the artifact
        before it is timed beside them: the latency cost of the plan.
        Returns the value to ship, the record for its metadata, and the verification record of the variant when
        that ships (else None)."""
        from edgec.targets.onnxruntime.target import host_int8_isa

        (artifact,) = self.pipeline.value(stage)[:1]
        fp32 = Artifact(self.onnx_model.path, ModelFormat.ONNX, Precision.FP32, build.target.name,
                        artifact.spec)
        rows = {"fp32": fp32, "built": artifact}
        kept = ((verified.get("fallback") or {}).get("kept") or []) if isinstance(verified, dict) else []
        if kept and stage != build.stage:  # the fallback's artifact: the all-INT8 one beside it gives the plan's cost
            (rows["before-fallback"],) = self.pipeline.value(build.stage)[:1]
        times, blocks = self._time(build.target, rows)
        ratio = times["built"] / times["fp32"]
        record: dict[str, Any] = {"fp32_ms": round(times["fp32"], 4), "ms": round(times["built"], 4),
                                  "ratio": round(ratio, 3), "host": host_int8_isa(), "threads": 1,
                                  "method": f"side by side, {blocks} alternating blocks a side"}
        name = f"{build.folder}/{build.precision.value}"
        verification = None
        requantized = (artifact.metadata.get("fusion") or {}).get("requantized_nodes") or []
        if ratio > SLOWER and build.precision == Precision.INT8 and requantized:
            variant = self._unrequantized(build, stage, artifact, requantized)
            if variant is not None:
                v_stage, v_artifact, v_verdict = variant
                rows["float-islands"] = v_artifact
                times, blocks = self._time(build.target, rows)
                ratio = times["built"] / times["fp32"]
                v_ratio = times["float-islands"] / times["fp32"]
                record.update(fp32_ms=round(times["fp32"], 4), ms=round(times["built"], 4), ratio=round(ratio, 3),
                              method=f"side by side, {blocks} alternating blocks a side",
                              float_islands={"ms": round(times["float-islands"], 4), "ratio": round(v_ratio, 3),
                                                 "kept_float": v_artifact.metadata.get("kept_float", [])})
                if v_ratio < ratio * (1 - MARGIN):
                    self.report(f"[latency] {name}: {ratio:.2f}x FP32 as built, {v_ratio:.2f}x with the ops it requantizes "
                                "around and their layers in float (within budget): shipping that")
                    record.update(ms=record["float_islands"]["ms"], ratio=round(v_ratio, 3), chosen="float-islands")
                    stage, ratio, artifact = v_stage, v_ratio, v_artifact
                    verification = {**v_verdict.to_dict(), "budget": self.budget.to_dict()}
        if "before-fallback" in times:
            record["before_fallback"] = {"ms": round(times["before-fallback"], 4), "kept": len(kept),
                                         "ratio": round(times["before-fallback"] / times["fp32"], 3)}
        ratio = record["ratio"]  # the message says the figure the manifest records
        if ratio > SLOWER:
            record["slower_than_fp32"] = True
            record["why"] = why_slower(artifact.metadata.get("fusion") or {}, record)
            self.report(f"[latency] {name}: {ratio:.2f}x the FP32 latency on this host ({record['host']}, 1 thread): "
                        f"{build.precision.value.upper()} is slower than FP32 here, {record['why']}; build -p fp32 "
                        "for this target if latency matters more than size")
        else:
            cost = record.get("before_fallback")
            self.report(f"[latency] {name}: {ratio:.2f}x the FP32 latency on this host ({record['host']}, 1 thread)"
                        + (f"; {cost['ratio']:.2f}x before the fallback kept {cost['kept']} layer(s)" if cost else ""))
        return stage, record, verification

    def _time(self, target: Any, rows: dict[str, Artifact]) -> tuple[dict[str, float], int]:
        import contextlib
        import statistics

        from edgec.benchmarks.harness import _adapt_feeds
        from edgec.benchmarks.latency import side_by_side, timed_call

        with contextlib.ExitStack() as stack:
            calls, feeds = {}, {}
            for key, art in rows.items():
                runner = stack.enter_context(target.open(art, 1))
                calls[key] = timed_call(runner)
                feeds[key] = [_adapt_feeds(self.held.samples[0], runner.input_specs(), art.spec)]
            times, blocks = side_by_side(calls, feeds, budget_s=LATENCY_BUDGET_S)
            return {k: statistics.median(v) for k, v in times.items()}, blocks

    def _unrequantized(self, build: Build, stage: str, artifact: Artifact,
                       requantized: list[str]) -> tuple[str, Artifact, Verdict] | None:
        """The INT8 build again with the ops the runtime requantizes around (``requantized``, its fusion report's
        nodes) and the weighted layers feeding them kept in float, when that differs from the artifact and passes
        its budget; else None."""
        import onnx

        from edgec.compiler.onnxutil import graph_structure
        from edgec.compiler.stages.target import TargetStage

        model = onnx.load(str(self.onnx_model.path), load_external_data=False)
        producer = {o: n.name for n in model.graph.node for o in n.output}
        weighted = set(graph_structure(model).weighted)
        names = {n.name: n for n in model.graph.node}
        keep = {n for n in requantized if n in names}
        keep |= {producer[i] for n in list(keep) for i in names[n].input if producer.get(i) in weighted}
        target = build.target.keep_in_higher_precision(sorted(keep))
        if target is None or not keep:
            return None
        name = self.pipeline.add(TargetStage(target, build.folder, build.precision, source=self._source_name(build),
                                             variant="unrequantized-" + hash_key(stage)[:8]))
        (variant,) = self.pipeline.value(name)[:1]
        if variant.sha256 == artifact.sha256:
            return None
        verdict = self.verdict(variant, name)
        if not verdict.passed:
            self.report(f"[latency] {build.folder}/{build.precision.value}: with {len(keep)} layer(s) in float it "
                        f"is over budget ({'; '.join(verdict.breaches)})")
            return None
        return name, variant, verdict

    def _source_name(self, build: Build) -> str:
        return self.pipeline.producer(build.stage).source

    def _failure(self, verdict: Verdict, why: str, layers: list[str]) -> VerificationFailed:
        tried = f"; layers tried: {', '.join(layers[:8])}{' ...' if len(layers) > 8 else ''}" if layers else ""
        return VerificationFailed(
            f"{verdict.artifact} is over its accuracy budget on {verdict.data}: {'; '.join(verdict.breaches)} "
            f"({why}{tried})",
            hint="build another precision for this target, give more representative --calib data, or set the budget "
            "(--max-accuracy-drop, --min-cosine); --no-verify skips the check",
        )


def why_slower(fusion: dict[str, Any], record: dict[str, Any]) -> str:
    """Why an INT8 artifact is slower than FP32, from what the build knows: its runtime's fusion report (compute
    ops left in float; ops with no int8 kernel, dequantized and requantized around) and the latency check's
    float-islands try (those ops and their layers in float). When neither is the cause, or removing it did not
    help, the int8 kernels themselves are not faster than the FP32 ones on this host."""
    parts = []
    before = record.get("before_fallback")
    if before and before["ratio"] <= SLOWER:  # the accuracy fallback's float layers cost the speed
        parts.append(f"the accuracy fallback kept {before['kept']} layer(s) in higher precision"
                     + (f" ({fusion['float']} compute ops run in float)" if fusion.get("float") else "")
                     + f"; the INT8 file before it ran {before['ratio']:.2f}x")
    elif fusion.get("float"):
        parts.append(f"{fusion['float']} compute op(s) run in float "
                     f"({', '.join(fusion.get('float_nodes', [])[:3])})")
    ops = fusion.get("requantized_ops") or {}
    if ops:
        parts.append(f"{sum(ops.values())} op(s) with no int8 kernel here ("
                     + ", ".join(f"{n} {op}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1]))
                     + ") are dequantized and requantized around")
    tried = record.get("float_islands")
    host = record.get("host", "this host")
    if tried and tried["ratio"] > SLOWER:
        lead = ("with those and their layers in float" if ops else
                f"with {len(tried.get('kept_float', []))} nodes in float (the ops its runtime requantized around "
                "and their layers)")
        parts.append(f"{lead} it still ran {tried['ratio']:.2f}x, so its int8 kernels themselves are not faster "
                     f"than the FP32 ones on {host}")
    elif not parts:
        parts.append(f"every compute op runs an int8 kernel: for this model's layer shapes they are not faster "
                     f"than the FP32 ones on {host}")
    return "why: " + "; ".join(parts)
