"""Machine-friendly and human-friendly output: --json to stdout, --quiet, and progress bars on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from edgec.cli import TerminalReporter
from edgec.compiler.context import progress, track


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_bar_is_drawn_on_a_terminal_and_lines_go_above_it():
    tty = _Tty()
    report = TerminalReporter(stream=tty)
    for i in track(report, "[calibrate] samples", range(4)):
        if i == 1:
            report("a progress line")
    assert "[calibrate] samples [" in tty.text and "4/4" in tty.text
    # the line was printed on a cleared line, then the bar redrawn under it
    assert "\r\033[Ka progress line\n[calibrate] samples [" in tty.text


def test_no_bar_off_a_terminal_or_when_quiet():
    class Pipe(_Tty):
        def isatty(self) -> bool:
            return False

    pipe = Pipe()
    report = TerminalReporter(stream=pipe)
    with progress(report, "x", 3) as bar:
        bar.update(3)
    report("line")
    assert pipe.text == "line\n"
    tty = _Tty()
    quiet = TerminalReporter(quiet=True, stream=tty)
    list(track(quiet, "x", range(3)))
    quiet("line")
    assert tty.text == ""
    # a plain function is a reporter too: progress() gives it a bar that does nothing
    with progress(print, "x", 2) as bar:
        bar.update()


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    from cliutil import run_edgec

    out = tmp_path_factory.mktemp("out") / "b"
    r = run_edgec("-q", "build", tiny / "tiny.pt2", "--target", "cpu", "-p", "fp32", "-p", "int8",
                  "--calib", tiny / "calib.npz", "--out", out, "--json", "-")
    assert r.returncode == 0, r.stderr
    return out, r


def test_build_json_to_stdout_is_the_manifest_and_quiet_prints_nothing(built):
    out, r = built
    data = json.loads(r.stdout)
    assert Path(data["out"]) == out.resolve()
    assert [a["precision"] for a in data["artifacts"]] == ["fp32", "int8"]
    assert all(line.startswith("warning: ") for line in r.stderr.splitlines())  # -q: warnings, no progress


def test_bench_json_to_stdout(built, tiny, edgec_cli):
    out, _ = built
    r = edgec_cli("-q", "bench", out, "--data", tiny / "calib.npz", "--iterations", "5", "--json", "-",
                  "--max-accuracy-drop", "100")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {run["name"] for run in data["runs"]} == {"cpu/fp32", "cpu/int8"}
    assert all(len(run["latency"]["latencies_ms"]) == 5 for run in data["runs"])
    assert "gates: passed" in r.stderr


def test_progress_bars_on_a_real_terminal(built, tiny):
    """The console script under a pseudo-terminal draws bars; the same run in a pipe does not."""
    out, _ = built
    exe = str(Path(sys.executable).with_name("edgec"))
    args = [exe, "bench", str(out), "--data", str(tiny / "calib.npz"), "--iterations", "5"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, terminal
    assert "cpu/int8: samples [" in terminal and "8/8" in terminal
    piped = subprocess.run(args, capture_output=True, text=True)
    assert piped.returncode == 0 and "samples [" not in piped.stderr and "cpu/int8: timing" in piped.stderr
