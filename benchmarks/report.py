"""Tables of benchmark results: Markdown for reports, aligned plain text for the terminal.

``md_table``, ``aligned_lines``, ``num_cell`` and ``verdict`` take plain cells, so any table of figures (the
``make bench`` suite's too) is written by the same code as ``edgec bench``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from edgec.benchmarks.results import BenchResults, RunResult

MISSING = "–"
COLUMNS = (
    "artifact",
    "runtime",
    "size",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "throughput/s",
    "peak mem MiB",
    "top-1 agree %",
    "accuracy % (drop pts)",
    "task metric (drop pts)",
    "cosine",
    "max abs err",
)
_FIRST_NUMERIC = "size"


def format_size(n: int | None) -> str:
    if n is None:
        return MISSING
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.2f} MiB"


def num_cell(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def verdict(passed: bool | None, unmeasured: str = "not measured") -> str:
    """PASS or FAIL for a checked target; ``unmeasured`` when the run could not measure it (``passed`` None)."""
    return unmeasured if passed is None else ("PASS" if passed else "FAIL")


def md_table(
    header: Sequence[str], body: Sequence[Sequence[str]], numeric_from: int, text_columns: Collection[int] = ()
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline).

    Columns from ``numeric_from`` on are right-aligned, except those in ``text_columns``. A ``|`` inside a
    body cell (an error message) is escaped so it cannot split the cell.
    """
    rule = ["---:" if i >= numeric_from and i not in text_columns else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def _accuracy_cell(run: RunResult) -> str:
    acc = run.accuracy
    if acc is None or acc.accuracy is None:
        return MISSING
    if acc.accuracy_drop is None:
        return f"{acc.accuracy:.2f}"
    return f"{acc.accuracy:.2f} ({acc.accuracy_drop:+.2f})"


def task_cell(run: RunResult) -> str:
    """The headline task metric, e.g. ``embedding mean_cosine 0.9937 (0.63)``."""
    head = run.accuracy.headline if run.accuracy is not None else None
    if head is None or head.value is None:
        return MISSING
    return f"{head.task} {head.headline} {head.value:.4g} ({head.drop:.2f})"


def _runtime(run: RunResult) -> str:
    # "onnxruntime 1.22.0 (CPUExecutionProvider)" -> keep the name and version; the provider is in the JSON.
    if not run.runtime:
        return MISSING
    name = run.runtime.split(" (")[0]
    # A stand-in runtime (TensorRT artifacts run on ONNX Runtime off the device) must say so in the table too.
    return f"{name} (estimate)" if "estimate" in run.runtime else name


def rows(results: BenchResults) -> list[list[str]]:
    """One row of cells per run, in COLUMNS order; the reference run's name is marked with '*'."""
    out = []
    for run in results.runs:
        lat, acc = run.latency, run.accuracy
        peak = lat.peak_rss_delta_bytes
        out.append(
            [
                run.name + (" *" if run.is_reference else ""),
                _runtime(run),
                format_size(run.size_bytes),
                num_cell(lat.p50_ms, ".3f"),
                num_cell(lat.p90_ms, ".3f"),
                num_cell(lat.p99_ms, ".3f"),
                num_cell(lat.throughput_per_s, ".1f"),
                num_cell(None if peak is None else peak / (1024 * 1024), ".1f"),
                num_cell(acc.agreement if acc else None, ".2f"),
                _accuracy_cell(run),
                task_cell(run),
                num_cell(acc.min_cosine if acc else None, ".6f"),
                num_cell(acc.max_abs_error if acc else None, ".3g"),
            ]
        )
    return out


def _footnote(results: BenchResults) -> str:
    notes = []
    if results.reference:
        marked = " (row marked *)" if any(r.is_reference for r in results.runs) else ""
        notes.append(f"reference: {results.reference}{marked}")
    if results.samples:
        source = f" from {results.data_source}" if results.data_source else ""
        notes.append(f"{results.samples} evaluation samples{source}")
    notes.append(
        "drop = reference - candidate accuracy; task metric: the headline output's, its drop in points "
        "(edgec.benchmarks.metrics); cosine: lowest, max abs err: highest over the outputs"
    )
    return "; ".join(notes)


def markdown_table(results: BenchResults) -> str:
    """A GitHub-flavoured Markdown table, one row per artifact, with a one-line legend under it."""
    table = md_table(COLUMNS, rows(results), numeric_from=COLUMNS.index(_FIRST_NUMERIC))
    return "\n".join([table, "", _footnote(results)]) + "\n"


def aligned_lines(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    numeric_from: int,
    spills: Callable[[str], bool] = lambda cell: False,
) -> list[str]:
    """A plain-text table: the header, a rule, then the rows; columns from ``numeric_from`` on right-aligned.

    A cell for which ``spills`` is true (a long failure message) runs past its column, left-aligned, instead
    of widening the column for every row.
    """
    widths = [
        max([len(header[i]), *(len(row[i]) for row in body if not spills(row[i]))]) for i in range(len(header))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= numeric_from and not spills(c) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]


def text_table(results: BenchResults) -> str:
    """The same table as plain text with aligned columns, for the terminal."""
    lines = aligned_lines(COLUMNS, rows(results), numeric_from=COLUMNS.index(_FIRST_NUMERIC))
    return "\n".join([*lines, "", _footnote(results)]) + "\n"
