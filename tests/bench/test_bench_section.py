"""What the sections share: their target checks, the rotation of rows, the harness section's rendering."""

from __future__ import annotations

from bench.section import Check, checks_list, checks_table, checks_text, rotated

CHECKS = [Check("p50 <= 1 ms", "0.80 ms", True), Check("drop <= 0.5", "0.9 | pts", False), Check("npu", "–", None)]


def test_checks_as_a_table_text_and_bullets():
    table = checks_table(CHECKS).splitlines()
    assert table[:2] == ["| target | measured | result |", "|---|---|---|"]
    assert table[2:] == ["| p50 <= 1 ms | 0.80 ms | PASS |", "| drop <= 0.5 | 0.9 \\| pts | FAIL |",
                         "| npu | – | not measured |"]
    text = checks_text(CHECKS).splitlines()
    assert text[0].split() == ["target", "measured", "result"] and text[4].endswith("not measured")
    assert checks_list(CHECKS) == ["- p50 <= 1 ms: 0.80 ms (PASS).", "- drop <= 0.5: 0.9 | pts (FAIL).",
                                   "- npu: – (n/a)."]


def test_rows_rotate_each_round():
    assert [rotated("abc", k) for k in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotated([], 3) == []


def test_harness_section_states_the_blocks_it_timed():
    from bench.harness import HarnessFigures, render

    figures = [HarnessFigures("digits cpu/fp32", 0.0300, 0.0306, 0.02, 1, spread=0.04, runs=3,
                              run_p50s_ms=[0.03, 0.031, 0.0302], bare_spread=0.01, blocks=150, block_calls=20)]
    md = render(figures, quick=True)
    lines = md.splitlines()
    assert lines[3] == "|---|---:|---:|---:|---|---:|---:|"
    assert lines[4] == "| digits cpu/fp32 | 0.0300 | 0.0306 | +2.00% | 0.0300, 0.0310, 0.0302 | 4.0% | 1.0% |"
    assert "- Overhead within 3% of a bare loop: worst 2.00% (PASS)." in lines
    assert "- Run-to-run spread of p50 under 5%: worst 4.0% (PASS)." in lines
    assert "This run: digits cpu/fp32 150 blocks of 20 call(s) a side." in md
