"""What the sections of BENCHMARKS.md share: a timing budget, targets checked against a figure, quiet tools."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from edgec.benchmarks.report import aligned_lines, md_table, verdict

T = TypeVar("T")
CHECK_COLUMNS = ("target", "measured", "result")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long to time: ``rounds`` round-robin passes over the rows, each timing every row for ``seconds``
    (``min_iterations`` to ``max_iterations`` calls, None for no cap, after ``warmup`` untimed calls)."""

    rounds: int
    seconds: float
    min_iterations: int
    max_iterations: int | None
    warmup: int


def rotated(rows: Sequence[T], round_: int) -> list[T]:
    """The rows in the order of round ``round_``: the order rotates each round, so no row always runs first."""
    shift = round_ % len(rows) if rows else 0
    return [*rows[shift:], *rows[:shift]]


@dataclasses.dataclass
class Check:
    """A target of an issue against the run's figure; ``passed`` None when the run could not measure it."""

    target: str
    measured: str
    passed: bool | None


def checks_table(checks: Sequence[Check], unmeasured: str = "not measured") -> str:
    """The checks as a Markdown table: target, measured, result."""
    return md_table(CHECK_COLUMNS, _cells(checks, unmeasured), numeric_from=len(CHECK_COLUMNS))


def checks_text(checks: Sequence[Check], unmeasured: str = "not measured") -> str:
    """The checks as an aligned plain-text table, for the terminal."""
    return "\n".join(aligned_lines(CHECK_COLUMNS, _cells(checks, unmeasured), numeric_from=len(CHECK_COLUMNS)))


def checks_list(checks: Sequence[Check], unmeasured: str = "n/a") -> list[str]:
    """The checks as Markdown bullets, ``- target: measured (PASS).``"""
    return [f"- {c.target}: {c.measured} ({verdict(c.passed, unmeasured)})." for c in checks]


def _cells(checks: Sequence[Check], unmeasured: str) -> list[list[str]]:
    return [[c.target, c.measured, verdict(c.passed, unmeasured)] for c in checks]


def quiet() -> AbstractContextManager[None]:
    """Silence the exporters and quantizers a section runs (torch, onnxscript, the root logger, nncf)."""
    from edgec.compiler.context import quiet_tools

    return quiet_tools("", "nncf")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, at most ``limit`` characters: a failure shown in a table cell."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:limit]


def build_for_bench(recipe: Any, cache_dir: Any = None, report: Any = None) -> tuple[Any, str]:
    """``edgec build`` as a section measures it: the default build, verification included; one that edgec's
    verification refuses (exit 4: an artifact over its accuracy budget, e.g. a random-weight net's INT8) is built
    again with ``verify=False`` so the section can still show its figures. Returns the build and a note saying
    so ("" when the default build passed)."""
    from pathlib import Path

    from edgec import api
    from edgec.verification import VerificationFailed

    try:
        return api.build(recipe, cache_dir=cache_dir), ""
    except VerificationFailed as exc:
        note = f"edgec's build-time verification refused the default build ({one_line(exc, 300)}); figures from --no-verify"
        if report is not None:
            report(f"[bench] {note}")
    out = Path(recipe.out)
    unverified = dataclasses.replace(recipe, verify=False, out=str(out.with_name(out.name + "-unverified")))
    return api.build(unverified, cache_dir=cache_dir), note
