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
