"""BuildContext: the resolved options, the build's folders, the cache and the progress reporter."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgec.compiler.cache import BuildCache

Reporter = Callable[[str], None]


def stderr_reporter(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def silent_reporter(message: str) -> None:
    pass


@dataclasses.dataclass
class BuildContext:
    work_dir: Path
    cache: BuildCache
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: Reporter = silent_reporter
    seed: int = 0
