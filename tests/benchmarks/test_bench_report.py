"""Markdown and terminal tables."""

from __future__ import annotations

from bench_models import make_results
from edgec.benchmarks.report import COLUMNS, MISSING, format_size, markdown_table, text_table


def test_markdown_has_header_and_one_row_per_artifact():
    md = markdown_table(make_results())
    lines = md.splitlines()
    assert lines[0].startswith("| artifact | runtime | size |")
    assert lines[1].count("|") == len(COLUMNS) + 1
    rows = [line for line in lines[2:] if line.startswith("| onnxruntime/")]
    assert len(rows) == 2
    fp32 = next(r for r in rows if "fp32" in r)
    int8 = next(r for r in rows if "int8" in r)
    assert "onnxruntime/fp32 *" in fp32
    assert "3.00 MiB" in fp32 and "900.0 KiB" in int8
    assert "| 1.150 |" in int8  # p50
    assert "| 80.00 (+20.00) |" in int8 and "| 100.00 (+0.00) |" in fp32
    assert "| 80.00 |" in int8 and "| 12.0 |" in int8
    assert "onnxruntime 1.32.0 |" in int8


def test_missing_values_show_a_dash():
    results = make_results()
    results.runs[1].accuracy = None
    results.runs[1].latency.peak_rss_delta_bytes = None
    int8 = next(r for r in markdown_table(results).splitlines() if "onnxruntime/int8" in r)
    cells = [c.strip() for c in int8.strip("|").split("|")]
    assert cells[COLUMNS.index("peak mem MiB")] == MISSING
    assert cells[COLUMNS.index("top-1 agree %")] == MISSING
    assert cells[COLUMNS.index("cosine")] == MISSING


def test_text_table_is_aligned():
    text = text_table(make_results())
    lines = text.splitlines()
    assert lines[0].split()[0] == "artifact"
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].index("onnxruntime 1.32.0") == lines[3].index("onnxruntime 1.32.0")
    # right-aligned numbers: the p50 cells end in the same column as their header
    end = lines[0].index("p50 ms") + len("p50 ms")
    assert lines[2][:end].endswith("2.300") and lines[3][:end].endswith("1.150")
    assert "|" not in text.split("\n\n")[0]


def test_format_size():
    assert format_size(512) == "0.5 KiB"
    assert format_size(5 * 1024 * 1024) == "5.00 MiB"
    assert format_size(None) == MISSING


def test_md_table_aligns_numeric_columns_and_escapes_pipes():
    from edgec.benchmarks.report import md_table

    table = md_table(["model", "note", "p50", "KiB"], [["a", "x | y", "1.0", "2"]], numeric_from=1,
                     text_columns=(1,))
    assert table.splitlines() == ["| model | note | p50 | KiB |", "|---|---|---:|---:|", "| a | x \\| y | 1.0 | 2 |"]


def test_verdict():
    from edgec.benchmarks.report import verdict

    assert [verdict(True), verdict(False), verdict(None), verdict(None, "n/a")] == [
        "PASS", "FAIL", "not measured", "n/a"]


def test_a_spilling_cell_does_not_widen_its_column():
    from edgec.benchmarks.report import aligned_lines

    rows = [["a", "1.5", "2"], ["b", "failed: a long message", "–"]]
    lines = aligned_lines(["row", "p50", "x"], rows, numeric_from=1, spills=lambda c: c.startswith("failed"))
    assert lines[0] == "row  p50  x"
    assert lines[2] == "a    1.5  2"
    assert lines[3] == "b    failed: a long message  –"
