"""BuildContext: the resolved options, the build's folders, the cache and the progress reporter."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from edgec.compiler.cache import BuildCache

Reporter = Callable[[str], None]
T = TypeVar("T")


def silent_reporter(message: str) -> None:
    pass


class NullBar:
    """A progress bar that draws nothing: what reporters without bars, and --quiet, get."""

    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress(report: Reporter, label: str, total: int | None) -> Iterator[Any]:
    """A progress bar for a long step, shown by reporters that can draw one (the CLI on a terminal).

    ``report`` may have a ``bar(label, total)`` method returning an object with ``update(n)`` and ``close()``;
    any other reporter (a plain function, --quiet, a log file) gets a bar that does nothing.
    """
    make = getattr(report, "bar", None)
    bar = make(label, total) if callable(make) else NullBar()
    try:
        yield bar
    finally:
        close = getattr(bar, "close", None)
        if callable(close):
            close()


TOOL_LOGGERS = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")


@contextlib.contextmanager
def quiet_tools(*more_loggers: str) -> Iterator[None]:
    """Silence what exporters and quantizers print (progress, warnings); edgec reports its own progress.

    torch's loggers hold their own handle on stderr, so redirecting sys.stderr alone does not silence them.
    """
    loggers = [logging.getLogger(n) for n in (*TOOL_LOGGERS, *more_loggers)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class NativeOutput:
    """What native code wrote to the process's stdout/stderr inside ``native_output`` (set when it ends)."""

    text = ""


@contextlib.contextmanager
def native_output(before_restore: Callable[[], None] | None = None) -> Iterator[NativeOutput]:
    """Hold back what native libraries write to file descriptors 1 and 2 directly (C++ logging, which neither
    sys.stdout nor a logger sees); the text is on the yielded object afterwards, for error messages.
    ``before_restore`` runs before the descriptors are put back (to flush a library's C stdio buffers)."""
    import os
    import sys
    import tempfile

    captured = NativeOutput()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            if before_restore is not None:
                before_restore()
            for fd, old in saved:
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


def track(report: Reporter, label: str, items: Iterable[T], total: int | None = None) -> Iterator[T]:
    """Yield ``items``, advancing a progress bar (see ``progress``) by one for each."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(report, label, total) as bar:
        for item in items:
            yield item
            bar.update(1)


@dataclasses.dataclass
class BuildContext:
    work_dir: Path
    cache: BuildCache
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: Reporter = silent_reporter
    seed: int = 0
