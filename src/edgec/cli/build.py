"""edgec build: a checkpoint to one folder of artifacts per target."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import reporter


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("-t", "--target", "target", multiple=True, help="Target: a device profile or backend (repeatable; see `edgec targets`). Default: cpu.")
@click.option("-p", "--precision", multiple=True, help="fp32, fp16 or int8 (repeatable). Default: fp32.")
@click.option("--calib", help="Calibration data: .npz/.npy (first axis = samples), an image folder, or module:function.")
@click.option("--calib-samples", type=int, help="Use N calibration samples, drawn at random with --seed.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), help="Activation range estimator (default minmax).")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="An input of the model, e.g. x:1x3x224x224:float32 (repeatable). A named dimension (Nx3x224x224) is dynamic.")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="Builds the nn.Module for a state_dict or safetensors checkpoint.")
@click.option("--trust-checkpoint", is_flag=True, default=None, help="Allow full unpickling of the checkpoint. Runs code from the file: only for files you trust.")
@click.option("--config", "config", type=click.Path(path_type=Path), help="A recipe (edgec.yaml); flags override it.")
@click.option("-o", "--out", help="The build folder to write (replaced atomically).")
@click.option("--opset", type=int, help="ONNX opset for export (default 18).")
@click.option("--seed", type=int, help="Seed for sampling (default 0).")
@click.option("--no-cache", is_flag=True, help="Rebuild every stage instead of reusing the build cache.")
@click.option("--cache-dir", type=click.Path(path_type=Path), envvar="EDGEC_CACHE_DIR", show_envvar=True, help="Build cache folder (default ~/.cache/edgec).")
@click.pass_context
def build(ctx: click.Context, checkpoint, target, precision, calib, calib_samples, calibration_method, inputs,
          model_factory, trust_checkpoint, config, out, opset, seed, no_cache, cache_dir) -> None:
    """Compile CHECKPOINT (.pt2, TorchScript, state_dict, .safetensors or .onnx) for one or more targets.

    Writes OUT/<target>/... and OUT/manifest.json (paths, sha256, formats, input/output specs, tool versions,
    the resolved recipe, the calibration set's hash).
    """
    from edgec.api import build as run_build
    from edgec.recipe import load_recipe, resolve

    flags = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "target": target,
        "precision": precision,
        "calib": calib,
        "calib_samples": calib_samples,
        "calibration_method": calibration_method,
        "inputs": inputs,
        "model_factory": model_factory,
        "trust_checkpoint": trust_checkpoint,
        "out": out,
        "opset": opset,
        "seed": seed,
        "cache": False if no_cache else None,
    }
    recipe = resolve(load_recipe(config), flags)
    result = run_build(recipe, report=reporter(ctx), cache_dir=cache_dir)
    for art in result.artifacts:
        fusion = art.metadata.get("fusion")
        note = ""
        if fusion:
            note = f"  int8 kernels {fusion['int8']}/{fusion['int8'] + fusion['float']}"
            if fusion["float"]:
                note += f" (left in float: {', '.join(fusion['float_nodes'][:5])})"
        click.echo(f"{art.path.relative_to(result.out)}  {art.path.stat().st_size / 1024:.1f} KiB{note}")
