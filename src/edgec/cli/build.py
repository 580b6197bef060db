"""edgec build: a checkpoint to one folder of artifacts per target.

Its options are the recipe's fields (``edgec.recipe.Recipe``): each is declared there once, with its type,
default, help, choices and flag, and turned into a click option here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgec.cli import emit_json, reporter
from edgec.recipe import Recipe, choices_of

_TYPES = {"int": int, "float": float, "str": str}


def _click_option(field: dataclasses.Field) -> Callable[[Any], Any] | None:
    """The click option for one recipe field, or None for a recipe-only key."""
    meta = field.metadata
    flag, default = meta["flag"], field.default
    if meta["negative"]:  # a boolean that defaults to true: only its "off" flag exists
        return click.option(meta["negative"], field.name, flag_value=False, default=None, help=meta["help"])
    if flag is None:
        return None
    names = [n for n in (meta["short"], flag or f"--{field.name.replace('_', '-')}") if n]
    kind = field.type.split(" | ")[0]
    kw: dict[str, Any] = {"help": meta["help"], "metavar": meta["metavar"]}
    if kind == "bool":
        if meta["secondary"]:
            return click.option(f"{names[-1]}/{meta['secondary']}", field.name, default=None, help=meta["help"])
        return click.option(*names, field.name, is_flag=True, default=None, help=meta["help"])
    choices = choices_of(field)
    if kind.startswith(("list", "dict")):
        kw["multiple"] = True
        kind = "str"
    kw["type"] = click.Choice(choices) if choices else _TYPES[kind]
    if default not in (None, dataclasses.MISSING) and not kw.get("multiple"):
        kw["help"] += f" [default: {default}]"
    return click.option(*names, field.name, **kw)


def recipe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add a click option for every recipe field that has a flag, in the recipe's order."""
    for field in reversed(dataclasses.fields(Recipe)):
        option = _click_option(field)
        if option is not None:
            command = option(command)
    return command


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@recipe_options
@click.option("--config", "config", type=click.Path(path_type=Path), help="A recipe (edgec.yaml); flags override it.")
@click.option("--cache-dir", type=click.Path(path_type=Path), envvar="EDGEC_CACHE_DIR", show_envvar=True, help="Build cache folder (default ~/.cache/edgec).")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the build's manifest as JSON to PATH, or to stdout with '-' (then nothing else is printed there).")
@click.pass_context
def build(ctx: click.Context, checkpoint: Path | None, config: Path | None, cache_dir: Path | None,
          json_out: str | None, **flags: Any) -> None:
    """Compile CHECKPOINT (.pt2, TorchScript, state_dict, .safetensors or .onnx) for one or more targets.

    Writes OUT/<target>/... and OUT/manifest.json (paths, sha256, formats, input/output specs, tool versions,
    the resolved recipe, the calibration set's hash).

    With --prune/--prune-macs (and --distill) the model is pruned (and distilled from the original) before
    export, so every target gets the smaller model; the manifest records params and MACs before and after.
    """
    from edgec.api import build as run_build
    from edgec.recipe import load_recipe, resolve

    flags["checkpoint"] = str(checkpoint) if checkpoint else None
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
        click.echo(f"  {_verification_line(art.metadata.get('verification'))}")
        latency = art.metadata.get("latency_check")
        if latency:
            from edgec.benchmarks.verify import latency_summary  # numpy: not for `edgec --help`

            click.echo(f"  latency {latency_summary(latency)}")
        for name, shapes in art.metadata.get("optimization_profile", {}).items():
            sources = art.metadata.get("profile_sources", {}).get(name, [])
            derived = sorted({s for s in sources if s != "fixed"})
            dims = {k: "x".join(map(str, v)) for k, v in shapes.items()}
            click.echo(f"  optimization profile {name}: min {dims['min']}, opt {dims['opt']}, max {dims['max']}"
                       f" (from {', '.join(derived)})")


def _verification_line(record: Any) -> str:
    if not isinstance(record, dict):
        return f"verification: {record or 'none'}"
    figures = "; ".join(f"{name} {m['task']} {m['headline']} {m['value']:.4g}" for name, m in record["outputs"].items()
                        if m.get("value") is not None)
    plan = record.get("fallback") or {}
    kept = plan.get("kept")
    how = f" ({plan['kept_as']})" if plan.get("kept_as") else ""
    fallback = f", {len(kept)} layer(s) kept in higher precision{how}" if kept else ""
    return f"verified on {record['data']}: {figures}{fallback}"
