"""edgec engine: TensorRT engines from a bundle, built on the Jetson or GPU machine that will run them."""

from __future__ import annotations

from pathlib import Path

import click

from edgec.cli import reporter


@click.group()
def engine() -> None:
    """TensorRT engines on the device (needs a CUDA device, cuda-python and the tensorrt module)."""


@engine.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--precision", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Precision to build (repeatable). Default: every precision in the bundle.")
@click.option("--dla-core", type=int, help="Run fp16/int8 layers on this DLA core (profiles with DLA only).")
@click.option("--no-dla", is_flag=True, help="Ignore the bundle's DLA choice: build for the GPU only.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla-core: fail instead of running unsupported layers on the GPU.")
@click.option("--timing-cache", type=click.Path(path_type=Path), envvar="EDGEC_TIMING_CACHE", show_envvar=True,
              help="Timing cache to read and update (default: BUNDLE/timing.cache).")
@click.option("--version-compatible", is_flag=True, help="Build engines later TensorRT releases of the same major can load.")
@click.pass_context
def build(ctx: click.Context, bundle: Path, precision, dla_core, no_dla, no_gpu_fallback, timing_cache,
          version_compatible) -> None:
    """Build strongly typed engines from BUNDLE (the <out>/<profile> folder of `edgec build --target jetson`).

    Writes BUNDLE/model.<precision>.engine and a sidecar model.<precision>.engine.json recording the TensorRT,
    CUDA and JetPack versions and the GPU; `edgec bench` refuses an engine whose sidecar does not match the device.
    """
    from edgec.compiler.errors import ConfigError
    from edgec.targets.tensorrt.engine import build_engines

    if dla_core is not None and no_dla:
        raise ConfigError("--dla-core and --no-dla exclude each other", hint="give one of them")
    results = build_engines(
        bundle, tuple(precision), dla_core=dla_core, timing_cache=timing_cache,
        version_compatible=version_compatible, gpu_fallback=not no_gpu_fallback, use_bundle_dla=not no_dla,
        report=reporter(ctx),
    )
    for r in results:
        dla = f"  DLA core {r.info['dla_core']}" if r.info.get("dla_core") is not None else ""
        click.echo(f"{r.engine}  {r.engine.stat().st_size / 1024:.1f} KiB  {r.seconds:.1f} s  "
                   f"TensorRT {r.info['tensorrt']} on {r.info['gpu_name']}{dla}")
