"""edgec build: a checkpoint to one folder of artifacts per target."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import emit_json, reporter


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("-t", "--target", "target", multiple=True, help="Target: a device profile or backend (repeatable; see `edgec targets`). Default: cpu.")
@click.option("-p", "--precision", multiple=True, help="fp32, fp16 or int8 (repeatable). Default: fp32, or int8 on INT8-only targets (mcu).")
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
@click.option("--prune", type=float, metavar="RATIO", help="Remove this fraction (0-1) of the channels of every prunable layer (torch-pruning).")
@click.option("--prune-macs", type=float, metavar="FRACTION", help="Remove this fraction (0-1) of the MACs instead, pruning step by step until met.")
@click.option("--prune-criterion", type=click.Choice(["l1", "l2", "taylor"]), help="Channel importance (default: taylor with --train-data, else l1).")
@click.option("--prune-global/--prune-per-layer", "prune_global", default=None, help="Rank channels across all layers, or remove the same fraction per layer (default).")
@click.option("--prune-round-to", type=int, metavar="N", help="Keep pruned channel counts multiples of N (8 suits x86 CPU kernels; odd counts can make fewer MACs slower).")
@click.option("--protect", multiple=True, metavar="PATTERN", help="Keep the output channels of modules matching this fnmatch pattern, e.g. 'stem.*' (repeatable). Output layers are always kept.")
@click.option("--distill", is_flag=True, default=None, help="Fine-tune the pruned model (or --student) against the original model as teacher.")
@click.option("--train-data", metavar="PATH", help="Training data for --distill and Taylor pruning (the formats of --calib).")
@click.option("--train-labels", metavar="PATH", help="Class labels of --train-data (.npy/.npz/.txt/.csv): adds a hard-label loss.")
@click.option("--epochs", type=int, help="Distillation epochs, at most (default 10; stops early when the held-out agreement stalls).")
@click.option("--lr", type=float, help="Distillation learning rate (default 1e-3, cosine schedule).")
@click.option("--distill-temperature", type=float, help="Softmax temperature of the distillation loss (default 4).")
@click.option("--hard-label-weight", type=float, metavar="W", help="Weight (0-1) of the hard-label loss (default 0.5 with --train-labels, else 0).")
@click.option("--feature-layer", "feature_layers", multiple=True, metavar="MODULE", help="Also match this module's output between teacher and student (repeatable).")
@click.option("--student", metavar="MODULE:FUNCTION", help="Distill into this smaller architecture instead of a pruned model.")
@click.option("--tensorboard", metavar="DIR", help="Write TensorBoard logs of the distillation curves here (needs tensorboard installed).")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the build's manifest as JSON to PATH, or to stdout with '-' (then nothing else is printed there).")
@click.pass_context
def build(ctx: click.Context, checkpoint, target, precision, calib, calib_samples, calibration_method, inputs,
          model_factory, trust_checkpoint, config, out, opset, seed, no_cache, cache_dir, prune, prune_macs,
          prune_criterion, prune_global, prune_round_to, protect, distill, train_data, train_labels, epochs, lr,
          distill_temperature, hard_label_weight, feature_layers, student, tensorboard, json_out) -> None:
    """Compile CHECKPOINT (.pt2, TorchScript, state_dict, .safetensors or .onnx) for one or more targets.

    Writes OUT/<target>/... and OUT/manifest.json (paths, sha256, formats, input/output specs, tool versions,
    the resolved recipe, the calibration set's hash).

    With --prune/--prune-macs (and --distill) the model is pruned (and distilled from the original) before
    export, so every target gets the smaller model; the manifest records params and MACs before and after.
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
        "prune": prune,
        "prune_macs": prune_macs,
        "prune_criterion": prune_criterion,
        "prune_global": prune_global,
        "prune_round_to": prune_round_to,
        "protect": protect,
        "distill": distill,
        "train_data": train_data,
        "train_labels": train_labels,
        "epochs": epochs,
        "lr": lr,
        "distill_temperature": distill_temperature,
        "hard_label_weight": hard_label_weight,
        "feature_layers": feature_layers,
        "student": student,
        "tensorboard": tensorboard,
    }
    recipe = resolve(load_recipe(config), flags)
    result = run_build(recipe, report=reporter(ctx), cache_dir=cache_dir)
    if json_out:
        emit_json({"out": str(result.out), **result.manifest}, json_out)
        if json_out == "-":
            return
    for art in result.artifacts:
        fusion = art.metadata.get("fusion")
        note = ""
        if fusion:
            note = f"  int8 kernels {fusion['int8']}/{fusion['int8'] + fusion['float']}"
            if fusion["float"]:
                note += f" (left in float: {', '.join(fusion['float_nodes'][:5])})"
        click.echo(f"{art.path.relative_to(result.out)}  {art.path.stat().st_size / 1024:.1f} KiB{note}")
        for name, shapes in art.metadata.get("optimization_profile", {}).items():
            sources = art.metadata.get("profile_sources", {}).get(name, [])
            derived = sorted({s for s in sources if s != "fixed"})
            dims = {k: "x".join(map(str, v)) for k, v in shapes.items()}
            click.echo(f"  optimization profile {name}: min {dims['min']}, opt {dims['opt']}, max {dims['max']}"
                       f" (from {', '.join(derived)})")
