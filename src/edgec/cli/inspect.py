"""edgec inspect: inputs/outputs, op histogram, parameters and MACs of a checkpoint or artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="Input spec when the checkpoint does not record it.")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="Builds the nn.Module for a state_dict checkpoint.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling (runs code from the file).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(path: Path, inputs, model_factory, trust_checkpoint, as_json) -> None:
    """Show PATH's inputs and outputs, op histogram, parameter count and MACs.

    PATH is a checkpoint (exported to ONNX in a temporary folder to count) or an ONNX artifact.
    """
    from edgec.api import inspect_model

    info = inspect_model(path, inputs, model_factory, trust_checkpoint)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['path']}  ({info['format']}, {info['size_bytes'] / 1024:.1f} KiB)")
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}:")
        for t in info[kind]:
            layout = f" {t['layout']}" if t.get("layout") else ""
            click.echo(f"  {t['name']}: {'x'.join(map(str, t['shape']))} {t['dtype']}{layout}")
    click.echo(f"parameters: {info['parameters']:,}")
    dynamic = info.get("dynamic_inputs") or []
    click.echo(f"MACs: {info['macs']:,} (Conv/Gemm/MatMul, batch 1"
               + (f"; dynamic axes of {', '.join(dynamic)} counted as 1: give --input NAME:SHAPE to count at a size)"
                  if dynamic else ")"))
    click.echo("ops:")
    for op, n in info["ops"].items():
        click.echo(f"  {op:<28}{n}")
