"""edgec bench: run every artifact on its real runtime; latency, memory, accuracy against FP32; gates."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import emit_json, reporter


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Evaluation data: .npz/.npy, an image folder, or module:function.")
@click.option("--labels", help="One integer label per sample (.npy, .txt, .csv) for task accuracy.")
@click.option("--samples", type=int, help="Use N evaluation samples, drawn at random with --seed.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--reference", help="Reference model: a checkpoint (run in torch) or an ONNX file. Default: the build's FP32 artifact.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="Input spec for a --reference checkpoint that lacks one.")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="Builds the nn.Module for a state_dict --reference.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of the --reference checkpoint.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--iterations", type=int, help="Timed runs per artifact (default 100).")
@click.option("--duration", type=float, help="Time budget in seconds per artifact, instead of --iterations.")
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads of each runtime.")
@click.option("--output-task", "output_tasks", multiple=True, metavar="NAME=TASK[:OPTIONS]", help="The task of an output (overrides what the build recorded or inferred), e.g. output0=detection:layout=xyxy.")
@click.option("--max-accuracy-drop", type=float, help="Gate: fail (exit 6) when an artifact loses more points on its headline task metric (accuracy with --labels; top-1 agreement, cosine, IoU... without).")
@click.option("--min-cosine", type=float, help="Gate: fail when an output's cosine to the reference is lower.")
@click.option("--max-ece-increase", type=float, help="Gate: fail when a classification output's expected calibration error grows more than this (needs --labels).")
@click.option("--min-iou", type=float, help="Gate: fail when a detection or dense output's IoU to the reference is lower.")
@click.option("--max-latency-ms", type=float, help="Gate: fail (exit 6) when an artifact's p50 latency exceeds this.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the results as JSON to PATH, or to stdout with '-' (then nothing else is printed there).")
@click.option("--remote", metavar="USER@HOST[:PORT]", help="Run the artifacts on this device over SSH (it needs Python 3.10+, numpy and the runtime); accuracy is computed here. Failures exit 5.")
@click.option("--identity", type=click.Path(path_type=Path), help="Private key for --remote (then the only key tried).")
@click.option("--remote-python", metavar="PATH", help="Python on the --remote device (default: python3).")
@click.pass_context
def bench(ctx, path, data, labels, samples, seed, reference, inputs, model_factory, trust_checkpoint, warmup,
          iterations, duration, threads, output_tasks, max_accuracy_drop, min_cosine, max_ece_increase, min_iou,
          max_latency_ms, json_out, remote, identity, remote_python) -> None:
    """Benchmark PATH (a build folder or one artifact) on its real runtimes.

    Prints per artifact latency p50/p90/p99, throughput, peak memory, size, and accuracy against the FP32
    reference (top-1 agreement, accuracy with --labels, cosine similarity, max abs error).
    """
    from edgec.api import bench as run_bench
    from edgec.benchmarks.gates import check_gates, enforce_gates
    from edgec.benchmarks.report import text_table
    from edgec.compiler.errors import ConfigError

    for name, value in (("--max-accuracy-drop", max_accuracy_drop), ("--max-latency-ms", max_latency_ms)):
        if value is not None and value < 0:
            raise ConfigError(f"{name} must be >= 0, not {value}")
    if (identity or remote_python) and not remote:
        raise ConfigError("--identity and --remote-python need --remote", hint="add --remote USER@HOST[:PORT]")
    # the local path passes no remote keywords, so it stays exactly as it was
    remote_args = {"remote": remote, "identity": identity, "remote_python": remote_python} if remote else {}
    results = run_bench(
        path, data, labels=labels, samples=samples, seed=seed, reference=reference, inputs=inputs,
        model_factory=model_factory, trust_checkpoint=trust_checkpoint, warmup=warmup, iterations=iterations,
        duration=duration, threads=threads, report=reporter(ctx), output_tasks=output_tasks, **remote_args,
    )
    if json_out == "-":
        emit_json(results.to_dict(), "-")
    else:
        click.echo(text_table(results))
        if json_out:
            results.to_json(json_out)
    task_gates = {"min_cosine": min_cosine, "max_ece_increase": max_ece_increase, "min_iou": min_iou}
    breaches = check_gates(results, max_accuracy_drop, max_latency_ms, **task_gates)
    if not breaches and any(g is not None for g in (max_accuracy_drop, max_latency_ms, *task_gates.values())):
        click.echo("gates: passed", err=json_out == "-")
    enforce_gates(results, max_accuracy_drop, max_latency_ms, **task_gates)
