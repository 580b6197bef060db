"""The command line: one module per command, thin bodies, heavy imports inside the commands.

This is the one place where an EdgecError becomes ``error: ... / hint: ...`` and an exit code. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from edgec import __version__
from edgec.compiler.errors import EdgecError

COMMANDS = {
    "build": "edgec.cli.build:build",
    "bench": "edgec.cli.bench:bench",
    "compare": "edgec.cli.compare:compare",
    "report": "edgec.cli.report:report",
    "inspect": "edgec.cli.inspect:inspect",
    "targets": "edgec.cli.targets:targets",
    "engine": "edgec.cli.engine:engine",
    "sweep": "edgec.cli.sweep:sweep",
}


class EdgecGroup(click.Group):
    """Loads each command's module only when that command runs, and turns user errors into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        import importlib

        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgecError as exc:
            if os.environ.get("EDGEC_DEBUG") and exc.__cause__ is not None:
                import traceback

                traceback.print_exception(exc.__cause__, file=sys.stderr)
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so a build removes its partial output on the way out.
    raise SystemExit(128 + signum)


@click.group(cls=EdgecGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EDGEC"})
@click.version_option(__version__, prog_name="edgec")
@click.option("-q", "--quiet", is_flag=True, envvar="EDGEC_QUIET", show_envvar=True, help="Print results and warnings only, no progress.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """edgec: compile trained models for edge devices and benchmark them on their real runtimes.

    \b
    Exit codes: 0 ok; 1 internal error (a bug: please report it with the traceback);
    2 bad option, recipe key, target or precision; 3 bad input file (checkpoint, data);
    4 build failed (export, quantization, target); 5 a target's runtime is not installed;
    6 a benchmark gate failed; 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


class TerminalReporter:
    """Progress lines to stderr, and progress bars for long steps when stderr is a terminal.

    A bar is redrawn in place on its own line; a progress line printed meanwhile goes above it. Off a terminal
    (a CI log, a pipe) there are only the lines; with --quiet, nothing.
    """

    WIDTH = 28

    def __init__(self, quiet: bool = False, stream: Any = None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._bar: _Bar | None = None

    def __call__(self, message: str) -> None:
        if self.quiet and not message.startswith("warning: "):  # --quiet drops progress, not warnings
            return
        self._clear()
        self.stream.write(message + "\n")
        if self._bar is not None:
            self._bar.draw()
        self.stream.flush()

    def bar(self, label: str, total: int | None) -> Any:
        if self.quiet or not getattr(self.stream, "isatty", lambda: False)():
            from edgec.compiler.context import NullBar

            return NullBar()
        self._clear()
        self._bar = _Bar(self, label, total)
        self._bar.draw()
        return self._bar

    def _clear(self) -> None:
        if self._bar is not None:
            self.stream.write("\r\033[K")


class _Bar:
    def __init__(self, owner: TerminalReporter, label: str, total: int | None):
        import time

        self.owner, self.label, self.total, self.done = owner, label, total, 0
        self._clock = time.monotonic
        self.started = self._last = self._clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= 0.1 or (self.total is not None and self.done >= self.total):
            self._last = now
            self.owner._clear()
            self.draw()

    def draw(self) -> None:
        elapsed = self._clock() - self.started
        if self.total:
            filled = int(TerminalReporter.WIDTH * min(1.0, self.done / self.total))
            bar = "#" * filled + "-" * (TerminalReporter.WIDTH - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:.0f}s"
        else:
            text = f"{self.label} {self.done} {elapsed:.0f}s"
        self.owner.stream.write(text)
        self.owner.stream.flush()

    def close(self) -> None:
        if self.owner._bar is self:
            self.owner._clear()
            self.owner.stream.flush()
            self.owner._bar = None


def reporter(ctx: click.Context) -> TerminalReporter:
    """Progress lines (and bars, on a terminal) to stderr, unless --quiet."""
    return TerminalReporter(quiet=bool(ctx.find_root().obj.get("quiet")))


def emit_json(data: Any, target: str | Path) -> None:
    """Write ``data`` as JSON to a file, or to stdout when ``target`` is '-' (machine-readable output)."""
    import json

    text = json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
    if str(target) == "-":
        click.echo(text, nl=False)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(prog_name="edgec")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
