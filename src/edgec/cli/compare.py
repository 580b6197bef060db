"""edgec compare: the same inputs through the reference and every artifact; where quantization error jumps."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import emit_json, reporter


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Inputs: .npz/.npy, an image folder, or module:function.")
@click.option("--labels", help="One integer label per sample, for task accuracy beside agreement.")
@click.option("--samples", type=int, help="Use N samples, drawn at random with --seed (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--reference", help="Reference: a checkpoint (run in torch) or an ONNX file. Default: the build's checkpoint in torch, else its FP32 artifact.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="Input spec for a --reference checkpoint that lacks one.")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="Builds the nn.Module for a state_dict --reference.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of the --reference checkpoint.")
@click.option("--artifact", "only", multiple=True, metavar="PROFILE/PRECISION", help="Compare only these artifacts (repeatable).")
@click.option("--layer-samples", type=int, default=8, show_default=True, help="Samples for the layer-by-layer walk of INT8/FP16 ONNX and TFLite artifacts; 0 skips it.")
@click.option("--jump-ratio", type=float, help="A layer's error jumps when it is this many times its inputs' (default 2).")
@click.option("--jump-min-increase", type=float, help="... and grows by at least this relative RMS error (default 0.05).")
@click.option("--output-task", "output_tasks", multiple=True, metavar="NAME=TASK[:OPTIONS]", help="The task of an output (overrides what the build recorded or inferred).")
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads of each runtime.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the comparison as JSON to PATH, or to stdout with '-' (then nothing else is printed there).")
@click.pass_context
def compare(ctx, paths, data, labels, samples, seed, reference, inputs, model_factory, trust_checkpoint, only,
            layer_samples, jump_ratio, jump_min_increase, output_tasks, threads, json_out) -> None:
    """Feed the same inputs to the reference and every artifact of the builds at PATHS (one or more build folders
    of the same checkpoint, e.g. a cpu/rpi5 build and an mcu build).

    Prints, per artifact and output, top-1 agreement, cosine, SNR and errors against the reference, the
    pairwise top-1 agreement of all runs, and for each INT8/FP16 ONNX or TFLite artifact the first layer whose
    error jumps against the FP32 artifact of its format (the one to keep in higher precision).
    """
    from edgec.api import compare as run_compare
    from edgec.benchmarks.compare import text_report

    comparison = run_compare(
        list(paths), data, labels=labels, samples=samples, seed=seed, reference=reference, inputs=inputs,
        model_factory=model_factory, trust_checkpoint=trust_checkpoint, only=tuple(only),
        layer_samples=layer_samples, jump_ratio=jump_ratio, jump_min_increase=jump_min_increase, threads=threads,
        report=reporter(ctx), output_tasks=tuple(output_tasks),
    )
    if json_out != "-":
        click.echo(text_report(comparison), nl=False)
    if json_out:
        emit_json(comparison.to_dict(), json_out)
