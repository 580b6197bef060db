"""BuildContext: the resolved options, the build's folders, the cache and the progress reporter."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgec.compiler.cache import BuildCache

Reporter = Callable[[str], None]


def silent_reporter(message: str) -> None:
    pass


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


@dataclasses.dataclass
class BuildContext:
    work_dir: Path
    cache: BuildCache
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: Reporter = silent_reporter
    seed: int = 0
