"""Stages: small steps with one ``run`` method, timed, checked and cached by the pipeline.

A stage reads named values produced by earlier stages (``reads``), writes only inside its own folder,
and returns one value (named ``writes``). Cacheable stages turn their value into JSON plus the files in
their folder (``save``) and back (``restore``).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from edgec.compiler.context import BuildContext


class Stage(abc.ABC):
    name: ClassVar[str]
    reads: tuple[str, ...] = ()
    writes: str = ""
    cacheable: ClassVar[bool] = True
    # Packages whose versions change this stage's output (part of the cache key).
    tools: ClassVar[tuple[str, ...]] = ()

    def options(self) -> dict[str, Any]:
        """Everything besides the inputs that changes the output; part of the cache key and the manifest."""
        return {}

    def requires(self, inputs: dict[str, Any], ctx: BuildContext) -> None:
        """Check preconditions; raise an EdgecError naming what is wrong."""

    @abc.abstractmethod
    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> Any:
        """Produce this stage's value; write files only inside ``out_dir``."""

    def save(self, value: Any, out_dir: Path) -> dict[str, Any]:
        """Describe ``value`` as JSON; files it refers to must be inside ``out_dir``."""
        raise NotImplementedError(f"stage {self.name} is cacheable but does not implement save()")

    def restore(self, result: dict[str, Any], files: Path) -> Any:
        raise NotImplementedError(f"stage {self.name} is cacheable but does not implement restore()")

    def summary(self, value: Any) -> dict[str, Any]:
        """Figures worth recording in the manifest (export error, fusion counts...)."""
        return {}

    @property
    def label(self) -> str:
        return self.name
