"""edgec sweep: search prune x precision x calibration x target for the Pareto front, locally or on a Ray cluster.

Its space and settings are ``edgec.sweep.SweepOptions``' fields (the recipe's ``sweep:`` section), each declared
there once and turned into a click option here; the build options every trial shares come from the recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgec.cli import emit_json, reporter
from edgec.sweep import SweepOptions

_TYPES = {"int": int, "float": float, "str": str}


def _sweep_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A click option per SweepOptions field: list fields repeat and take comma-separated values."""
    for field in reversed(dataclasses.fields(SweepOptions)):
        meta = field.metadata
        names = [n for n in (meta["short"], f"--{field.name.replace('_', '-')}") if n]
        kind = field.type.split(" | ")[0]
        help_text = meta["help"]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if default not in (None, []):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" [default: {shown}]"
        if kind.startswith("list"):
            option = click.option(*names, field.name, multiple=True, metavar=meta["metavar"], help=help_text)
        else:
            option = click.option(*names, field.name, type=_TYPES[kind], metavar=meta["metavar"], help=help_text)
        command = option(command)
    return command


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Evaluation data for every trial's benchmark (the formats of edgec bench).")
@click.option("--labels", help="Labels of --data: the accuracy drop is then against ground truth.")
@click.option("--calib", help="Calibration data for the INT8 points (.npz/.npy, an image folder, module:function).")
@click.option("--model-factory", metavar="MODULE:FUNCTION", help="The model's Python code, for pruning a traced checkpoint.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="An input of the model (repeatable).")
@click.option("--seed", type=int, help="Seed for sampling, the search and anything random.")
@_sweep_options
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The sweep's folder: storage, trials, sweep.json, sweep.md.")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out (or --storage) where it stopped.")
@click.option("--config", type=click.Path(path_type=Path), help="A recipe: the build options every trial shares, and a sweep: section; flags override it.")
@click.option("--cache-dir", type=click.Path(path_type=Path), envvar="EDGEC_CACHE_DIR", show_envvar=True, help="Build cache folder shared by the trials (default ~/.cache/edgec).")
@click.option("--json", "json_out", metavar="PATH|-", help="Also write sweep.json's content to PATH, or to stdout with '-'.")
@click.pass_context
def sweep(ctx: click.Context, checkpoint: Path, data: str, labels: str | None, calib: str | None,
          model_factory: str | None, inputs: tuple[str, ...], seed: int | None, out: Path, resume: bool,
          config: Path | None, cache_dir: Path | None, json_out: str | None, **flags: Any) -> None:
    """Build and benchmark CHECKPOINT over a space of prune ratios, precisions, calibration methods and targets;
    report every trial and the Pareto front (accuracy drop, p50 latency, size) with the command that rebuilds
    each point.

    Runs on a local Ray instance (one trial per core) or an existing cluster (--ray-address); the study lives in
    OUT/sweep.db (or --storage), so --resume continues a killed sweep without repeating a finished trial.
    """
    from edgec.benchmarks.report import aligned_lines
    from edgec.recipe import load_recipe, resolve
    from edgec.sweep import sweep as run_sweep
    from edgec.sweep import table_rows

    file_values = load_recipe(config)
    space = file_values.pop("sweep", None) or {}
    options = SweepOptions.from_values(space, flags)
    base = resolve(file_values, {"checkpoint": str(checkpoint), "calib": calib, "model_factory": model_factory,
                                 "inputs": inputs, "seed": seed})
    result = run_sweep(base, options, data, out, labels=labels, resume=resume, cache_dir=cache_dir,
                       config=config.resolve() if config else None, report=reporter(ctx))
    payload = {**result.summary, "pareto": [r["number"] for r in result.trials if r["pareto"]],
               "trials": result.trials}
    if json_out:
        emit_json(payload, json_out)
        if json_out == "-":
            return
    header, rows = table_rows(result.trials)
    click.echo("\n".join(aligned_lines(header, rows, numeric_from=4)))
    click.echo(result.summary["latency_note"] + ".")
    for r in result.trials:
        if r["pareto"]:
            click.echo(f"pareto #{r['number']}: {r['command']}")
    click.echo(f"{len(result.trials)} trials in {result.summary['wall_s']:.1f} s; results: {result.out}/sweep.json")
