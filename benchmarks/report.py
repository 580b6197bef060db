"""Tables of benchmark results: Markdown for reports, aligned plain text for the terminal."""

from __future__ import annotations

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
    "cosine",
    "max abs err",
)
_NUMERIC = frozenset(COLUMNS[2:])


def format_size(n: int | None) -> str:
    if n is None:
        return MISSING
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.2f} MiB"


def num_cell(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def _accuracy_cell(run: RunResult) -> str:
    acc = run.accuracy
    if acc is None or acc.accuracy is None:
        return MISSING
    if acc.accuracy_drop is None:
        return f"{acc.accuracy:.2f}"
    return f"{acc.accuracy:.2f} ({acc.accuracy_drop:+.2f})"


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
        "drop = reference - candidate accuracy; cosine: lowest, max abs err: highest over the outputs"
    )
    return "; ".join(notes)


def markdown_table(results: BenchResults) -> str:
    """A GitHub-flavoured Markdown table, one row per artifact, with a one-line legend under it."""
    header = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join("---:" if c in _NUMERIC else "---" for c in COLUMNS) + "|"
    body = ["| " + " | ".join(cells) + " |" for cells in rows(results)]
    return "\n".join([header, align, *body, "", _footnote(results)]) + "\n"


def aligned_lines(header: list[str], body: list[list[str]], numeric_from: int) -> list[str]:
    """A plain-text table: the header, a rule, then the rows; columns from ``numeric_from`` on right-aligned."""
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= numeric_from else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)]


def text_table(results: BenchResults) -> str:
    """The same table as plain text with aligned columns, for the terminal."""
    # the numeric columns are the ones from "size" on
    lines = aligned_lines(list(COLUMNS), rows(results), numeric_from=COLUMNS.index("size"))
    return "\n".join([*lines, "", _footnote(results)]) + "\n"
