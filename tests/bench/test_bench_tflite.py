"""The arm/mcu benchmark section end to end, quick mode (digits only): trains, builds rpi5 and Ethos-U, quantizes
with the peer, times, and checks the targets."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch", reason="the section needs torch (pip install 'edgec[torch]')")
pytest.importorskip("sklearn", reason="the digits model needs scikit-learn (pip install 'edgec[samples]')")
pytest.importorskip("litert_torch", reason="the arm target needs litert-torch (pip install 'edgec[arm]')")
pytest.importorskip("ai_edge_quantizer", reason="the peer is ai-edge-quantizer (pip install 'edgec[arm]')")
pytest.importorskip("tflite_micro", reason="the mcu target needs tflite-micro (pip install 'edgec[mcu]')")
pytest.importorskip("ethosu", reason="the Ethos-U profile needs ethos-u-vela (pip install 'edgec[mcu]')")


def _table(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with ``header_start``."""
    lines = markdown.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    block = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        block.append(ln)
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in block[2:]]


@pytest.mark.slow
def test_quick_section_on_digits(tmp_path):
    from bench import tflite as bench_tflite

    messages: list[str] = []
    md = bench_tflite.run(quick=True, work=tmp_path, report=messages.append)

    assert md.startswith("## Arm (LiteRT) and MCU (TFLite Micro, Ethos-U) targets")
    assert "How measured:" in md and "--quick" in md
    assert any("peer ai-edge-quantizer" in m for m in messages)

    rows = {cells[1]: cells for cells in _table(md, "| model | row |")}
    assert set(rows) == {"torch FP32 (reference)", *(label for _, label in bench_tflite.ROWS)}
    torch_acc = float(rows["torch FP32 (reference)"][9].rstrip("%"))
    assert torch_acc > 90
    for _, label in bench_tflite.ROWS:
        cells = rows[label]
        assert cells[0] == "digits" and not cells[2].startswith("failed"), cells
        size, floats, xnnpack, p50, ratio, agree, sqnr, acc, drop = cells[2:]
        assert float(size) > 0 and float(p50) > 0 and float(ratio) > 0
        assert xnnpack == "whole graph"
        # drop is the torch model's accuracy minus the row's
        assert float(drop) == pytest.approx(torch_acc - float(acc.rstrip("%")), abs=0.011)
        assert 0 <= float(agree.rstrip("%")) <= 100
        assert float(sqnr) > 10  # dB: every row tracks the torch logits
    assert rows["edgec LiteRT FP32"][6] == "1.000"
    assert float(rows["edgec LiteRT FP32"][7].rstrip("%")) >= 99.5  # an exact conversion of the torch model
    assert rows["edgec LiteRT INT8"][3].startswith("0/")  # full integer: no float op
    assert rows["edgec LiteRT FP32"][3] == "–"

    (mcu,) = _table(md, "| model | same file as rpi5 INT8 |")
    assert mcu[0] == "digits" and mcu[1] == "yes"  # the rpi5 and mcu builds write the same INT8 file
    recorded, bisected, edgec_min = (int(v) for v in mcu[2:5])
    assert bisected <= recorded and edgec_min <= recorded
    npu, cpu = (int(v) for v in mcu[7].split("/"))
    assert npu > 0 and int(mcu[8]) > 0
    agree = re.fullmatch(r"(\d+)/(\d+)", mcu[13])
    assert agree and int(agree.group(2)) == 360 and int(agree.group(1)) <= 360

    verdicts = re.findall(r"^- (.+) \((PASS|FAIL|n/a)\)\.$", md, re.MULTILINE)
    assert len(verdicts) == 4, verdicts
    # every target is measurable on digits: each gets a real PASS or FAIL
    assert all(v in ("PASS", "FAIL") for _, v in verdicts), verdicts
    texts = " ".join(t for t, _ in verdicts)
    for what in ("accuracy drop <= 0.5", "TFLM vs LiteRT top-1 agreement", "arena", "on the Ethos-U NPU"):
        assert what in texts
    # each verdict follows its figure
    from edgec.targets.tflm.arena import recorded as with_margin

    verdict = {what: v for t, v in verdicts for what in ("drop", "agreement", "arena", "NPU") if what in t}
    assert verdict["NPU"] == ("PASS" if cpu == 0 else "FAIL")
    assert verdict["agreement"] == ("PASS" if agree.group(1) == agree.group(2) else "FAIL")
    assert verdict["arena"] == ("PASS" if bisected <= recorded <= with_margin(bisected, 0.10) else "FAIL")
    int8_drop = float(rows["edgec LiteRT INT8"][10])
    assert verdict["drop"] == ("PASS" if int8_drop <= bench_tflite.MAX_INT8_DROP else "FAIL")
