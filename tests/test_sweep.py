"""edgec sweep end to end: real Ray (a local instance the sweep starts), real Optuna storage (SQLite), real builds
and benchmarks of the digits demo CNN. Every sweep runs as the installed console script, in its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliutil import run_edgec

pytest.importorskip("ray", reason="edgec sweep needs ray: pip install 'edgec[sweep]'")
pytest.importorskip("optuna", reason="edgec sweep needs optuna: pip install 'edgec[sweep]'")

pytestmark = pytest.mark.slow

POINTS = {"cpu/fp32/-/prune=0", "cpu/fp32/-/prune=0.25", "cpu/int8/minmax/prune=0", "cpu/int8/minmax/prune=0.25"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from edgec.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("digits"), epochs=1)


SPACE = ("--prune", "0,0.25", "-p", "fp32", "-p", "int8")


def sweep_args(demo, out: Path, *extra: str, space: tuple[str, ...] = SPACE) -> list[str]:
    return ["sweep", str(demo["checkpoint"]), "--data", str(demo["eval"]), "--labels", str(demo["eval_labels"]),
            "--calib", str(demo["calib"]), "--model-factory", "edgec.demo:digits_cnn", *space,
            "--iterations", "10", "--warmup", "2", "--rounds", "2", "--samples", "100", "--out", str(out), *extra]


def popen_edgec(args: list[str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("edgec")
    # Its own session: a SIGKILL of the group takes the driver and the Ray instance it started.
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stored_trials(out: Path) -> list[tuple[int, str, str | None]]:
    """(number, state, point) of every trial, read from the SQLite storage itself."""
    with sqlite3.connect(out / "sweep.db") as db:
        rows = db.execute(
            "SELECT t.number, t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = 'point' ORDER BY t.number").fetchall()
    return [(n, state, json.loads(p) if p else None) for n, state, p in rows]


def attempts(out: Path, number: int) -> list[str]:
    path = out / "trials" / f"{number:04d}.attempts"
    return path.read_text().splitlines() if path.is_file() else []


def test_grid_sweep_retries_a_killed_worker_and_marks_the_front(demo, tmp_path):
    """Four points on a 2-CPU local Ray instance; the worker running the first trial is SIGKILLed mid-trial:
    Ray reruns it and the study records it once."""
    out = tmp_path / "sweep"
    proc = popen_edgec(sweep_args(demo, out, "--workers", "2", "--retries", "2"))
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        logs = sorted((out / "trials").glob("*.attempts")) if (out / "trials").is_dir() else []
        if logs and logs[0].read_text().strip():
            killed = (int(logs[0].name.split(".")[0]), int(logs[0].read_text().split()[0]))
            os.kill(killed[1], signal.SIGKILL)
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert killed is not None, "no trial started"

    report = json.loads((out / "sweep.json").read_text())
    trials = report["trials"]
    assert sorted(t["point"] for t in trials) == sorted(POINTS)
    assert all(t["state"] == "complete" for t in trials), output
    # The killed trial ran twice (the second attempt in another worker), and is one trial in the storage.
    number, pid = killed
    lines = attempts(out, number)
    assert len(lines) == 2 and lines[0].split()[0] == str(pid) and lines[1].split()[0] != str(pid), lines
    assert [t["attempts"] for t in trials if t["number"] == number] == [2]
    assert sorted(n for n, _, _ in stored_trials(out)) == [0, 1, 2, 3]
    assert {state for _, state, _ in stored_trials(out)} == {"COMPLETE"}

    by_point = {t["point"]: t for t in trials}
    # FP32, unpruned: the same model as the reference checkpoint, so the same predictions.
    assert abs(by_point["cpu/fp32/-/prune=0"]["accuracy_drop"]) < 0.5
    assert by_point["cpu/int8/minmax/prune=0"]["size_bytes"] < by_point["cpu/fp32/-/prune=0"]["size_bytes"]
    assert by_point["cpu/fp32/-/prune=0.25"]["size_bytes"] < by_point["cpu/fp32/-/prune=0"]["size_bytes"]

    # The front: drawn from the re-measured latencies, and no front point dominated by another candidate.
    front = [t for t in trials if t["pareto"]]
    assert front and report["pareto"] == [t["number"] for t in front]
    candidates = [t for t in trials if t["candidate"]]
    assert all(t["p50_ms_remeasured"] > 0 for t in candidates)
    assert all(t["p50_ms_remeasured"] is None for t in trials if not t["candidate"])
    keys = ("accuracy_drop", "p50_ms_remeasured", "size_bytes")
    for t in front:
        assert not any(all(o[k] <= t[k] for k in keys) and any(o[k] < t[k] for k in keys) for o in candidates)
    assert "pareto" in (out / "sweep.md").read_text()
    page = (out / "sweep.html").read_text()
    assert page.count("<svg") == 2 and all(f">#{t['number']}<" in page for t in front)

    # A front point's command rebuilds the same artifact; its resolved recipe is kept beside it.
    point = front[0]
    assert Path(point["recipe"]).is_file() and f"prune: {point['prune'] or 'null'}" in Path(point["recipe"]).read_text()
    rebuilt = tmp_path / "rebuilt"
    args = point["command"].split()[2:]
    args[args.index("--out") + 1] = str(rebuilt)
    result = run_edgec("build", *args, "--json", "-")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    original = json.loads((Path(point["artifact"]).parent.parent / "manifest.json").read_text())
    assert manifest["artifacts"][0]["sha256"] == original["artifacts"][0]["sha256"]


def test_killed_sweep_resumes_without_losing_or_repeating_a_trial(demo, tmp_path):
    out = tmp_path / "sweep"
    proc = popen_edgec(sweep_args(demo, out, "--workers", "1"))
    deadline = time.monotonic() + 240
    states: set = set()
    while time.monotonic() < deadline and proc.poll() is None:
        rows = []
        if (out / "sweep.db").is_file():
            try:
                rows = stored_trials(out)
            except sqlite3.Error:  # the driver is creating the tables
                rows = []
        states = {state for _, state, _ in rows}
        # killed with one trial done and one under way in its worker (its attempt logged: a trial asked but not
        # yet started on a busy machine would not count as run)
        if "COMPLETE" in states and any(state == "RUNNING" and attempts(out, n) for n, state, _ in rows):
            break
        time.sleep(0.1)
    assert {"COMPLETE", "RUNNING"} <= states and proc.poll() is None, "the sweep ended or stalled before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = stored_trials(out)
    finished = {n for n, state, _ in before if state == "COMPLETE"}
    left_running = {n for n, state, _ in before if state == "RUNNING"}
    assert 1 <= len(finished) < 4 and left_running, before
    with sqlite3.connect(out / "sweep.db") as db:
        values_before = db.execute("SELECT trial_id, objective, value FROM trial_values ORDER BY 1, 2").fetchall()

    result = run_edgec(*sweep_args(demo, out, "--workers", "2", "--resume"))
    assert result.returncode == 0, result.stderr
    after = stored_trials(out)
    assert [n for n, _, _ in after] == [0, 1, 2, 3]
    assert {state for _, state, _ in after} == {"COMPLETE"}
    assert sorted(p for _, _, p in after) == sorted(POINTS)
    for n in finished:  # finished before the kill: never run again
        assert len(attempts(out, n)) == 1, n
    for n in left_running:  # running at the kill: run again, under the same number
        assert len(attempts(out, n)) == 2, n
    with sqlite3.connect(out / "sweep.db") as db:
        values_after = db.execute("SELECT trial_id, objective, value FROM trial_values ORDER BY 1, 2").fetchall()
    assert set(values_before) <= set(values_after)
    assert "resuming" in result.stderr

    again = run_edgec(*sweep_args(demo, out, "--workers", "2"))
    assert again.returncode == 2 and "is not empty" in again.stderr


def invoke(*args) -> subprocess.CompletedProcess:
    """The command in this process (click's CliRunner): the error paths, which start no Ray."""
    from click.testing import CliRunner

    from edgec.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def _assert_usage_error(result, code: int, words: str, out: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert lines[-2].startswith("error:") and words in lines[-2], lines
    assert lines[-1].startswith("hint:"), lines
    assert not out.exists()


@pytest.mark.parametrize(("space", "words"), [
    (("--prune", ","), "no prune values"),
    (("--prune", "0,1.5"), "prune ratio"),
    (("-t", "mcu", "-p", "fp32"), "no buildable point"),
    (("--calibration-method", "minmax,nope"), "'nope' is not valid"),
    (("--prune", "0.5", "-p", "int8", "--max-latency-ms", "-1"), "--max-latency-ms must be >= 0"),
])
def test_bad_space_is_a_usage_error_and_writes_nothing(demo, tmp_path, space, words):
    out = tmp_path / "sweep"
    _assert_usage_error(invoke(*sweep_args(demo, out, space=space)), 2, words, out)


def test_unreachable_ray_address_exits_5_and_writes_nothing(demo, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "sweep"
    result = invoke(*sweep_args(demo, out, "--ray-address", f"127.0.0.1:{port}"))
    _assert_usage_error(result, 5, f"no Ray cluster answers at 127.0.0.1:{port}", out)


def test_storage_of_another_model_is_refused_and_left_alone(demo, tmp_path):
    import optuna

    out = tmp_path / "sweep"
    out.mkdir()
    study = optuna.create_study(study_name="edgec-sweep", storage=f"sqlite:///{out / 'sweep.db'}",
                                directions=["minimize"] * 3)
    study.set_user_attr("checkpoint_sha256", "0" * 64)
    before = (out / "sweep.db").read_bytes()
    result = invoke(*sweep_args(demo, out, "--resume"))
    assert result.returncode == 2, result.stderr
    assert "holds a sweep of another model" in result.stderr and "hint:" in result.stderr
    assert (out / "sweep.db").read_bytes() == before
    assert not (out / "trials").exists() and not (out / "sweep.json").exists()


def test_resume_without_a_sweep_is_a_usage_error(demo, tmp_path):
    result = invoke(*sweep_args(demo, tmp_path / "none", "--resume"))
    _assert_usage_error(result, 2, "holds no sweep", tmp_path / "none")


def test_sweep_help_imports_neither_ray_nor_optuna():
    code = ("import sys; from click.testing import CliRunner; from edgec.cli import cli; "
            "r = CliRunner().invoke(cli, ['sweep', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--ray-address' in r.output; "
            "print(sorted(m for m in ('ray', 'optuna', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _namespaces_work() -> bool:
    """A private network and PID namespace (root, or user namespaces allowed), with `ip` to bring up loopback."""
    try:
        done = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "ip", "link", "set", "lo", "up"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


CLUSTER = """
set -u
ip link set lo up
export RAY_AUTH_MODE=token RAY_TMPDIR="$RAYTMP"
"$BIN/ray" start --head --port=6390 --node-ip-address=127.0.0.1 --num-cpus=1 --include-dashboard=false \\
    --disable-usage-stats --temp-dir="$RAYTMP" > "$LOGS/head.log" 2>&1 || exit 90
"$BIN/ray" start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats \\
    > "$LOGS/node.log" 2>&1 || exit 91
"$BIN/edgec" "$@" --ray-address 127.0.0.1:6390 > "$LOGS/sweep.log" 2>&1 &
sweep=$!
for _ in $(seq 1 3000); do  # kill the worker process running the first trial, once, mid-trial
    f=$(ls "$OUT"/trials/*.attempts 2>/dev/null | head -n 1)
    if [ -n "$f" ] && [ -s "$f" ]; then
        pid=$(head -n 1 "$f" | cut -d' ' -f1); kill -9 "$pid" && echo "$(basename "$f" .attempts) $pid" > "$LOGS/killed"
        break
    fi
    sleep 0.05
done
wait "$sweep"; rc=$?
"$BIN/ray" stop --force > /dev/null 2>&1  # inside this PID namespace: only this test's Ray processes
exit $rc
"""


@pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -n -p` (root or user namespaces) and `ip`")
def test_two_node_cluster_retries_a_trial_whose_worker_died(demo, tmp_path):
    """A real two-node Ray cluster (`ray start --head` + `ray start --address`, one CPU each), kept on 127.0.0.1
    in private network and PID namespaces; the worker running the first trial is SIGKILLed."""
    import tempfile

    out, logs = tmp_path / "sweep", tmp_path / "logs"
    logs.mkdir()
    raytmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    script = tmp_path / "cluster.sh"
    script.write_text(CLUSTER)
    env = {**os.environ, "BIN": str(Path(sys.executable).parent), "RAYTMP": raytmp, "LOGS": str(logs),
           "OUT": str(out)}
    args = sweep_args(demo, out, "--retries", "2", space=("--prune", "0", "-p", "fp32,int8"))
    try:
        done = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", str(script), *args], env=env,
                              capture_output=True, text=True, timeout=400)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    sweep_log = (logs / "sweep.log").read_text() if (logs / "sweep.log").is_file() else done.stderr
    assert done.returncode == 0, sweep_log

    report = json.loads((out / "sweep.json").read_text())
    assert report["ray_address"] == "127.0.0.1:6390" and report["slots"] == 2
    trials = report["trials"]
    assert sorted(t["point"] for t in trials) == ["cpu/fp32/-/prune=0", "cpu/int8/minmax/prune=0"]
    assert all(t["state"] == "complete" for t in trials)
    number, pid = map(int, (logs / "killed").read_text().split())
    lines = attempts(out, number)
    assert len(lines) == 2 and lines[0].split()[0] == str(pid), lines
    assert [t["attempts"] for t in trials if t["number"] == number] == [2]
    nodes = {line.split()[2] for t in trials for line in attempts(out, t["number"])}
    assert len(nodes) == 2, nodes  # the two trials started on the two nodes
    assert sorted(n for n, _, _ in stored_trials(out)) == [0, 1]


@pytest.mark.parametrize(("section", "words"), [
    ("sweep:\n  prune_ratio: [0.5]\n", "unknown key 'prune_ratio' in the recipe's sweep section"),
    ("sweep:\n  target: [mcu]\n  precision: [fp32]\n", "no buildable point"),
    ("sweep:\n  calibration_method: minmax,nope\n", "'nope' is not valid"),
])
def test_recipe_sweep_section_is_read_and_checked(demo, tmp_path, section, words):
    recipe = tmp_path / "edgec.yaml"
    recipe.write_text(f"calib: {demo['calib']}\n{section}")
    out = tmp_path / "sweep"
    result = invoke("sweep", demo["checkpoint"], "--config", recipe, "--data", demo["eval"], "--out", out)
    _assert_usage_error(result, 2, words, out)


def test_a_running_sweep_keeps_a_second_one_off_its_folder(demo, tmp_path):
    import fcntl

    import optuna

    out = tmp_path / "sweep"
    out.mkdir()
    optuna.create_study(study_name="edgec-sweep", storage=f"sqlite:///{out / 'sweep.db'}", directions=["minimize"] * 3)
    with open(out / ".sweep.lock", "a+") as held:  # what a running driver holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke(*sweep_args(demo, out, "--resume"))
    assert result.returncode == 2, result.stderr
    assert "another edgec sweep is running" in result.stderr


def test_without_optuna_sweep_says_what_to_install(demo, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "optuna.py").write_text("raise ImportError('optuna is not installed (test shim)')\n")
    out = tmp_path / "sweep"
    result = run_edgec(*sweep_args(demo, out), env={"PYTHONPATH": str(shim)})
    _assert_usage_error(result, 5, "needs the Python package 'optuna'", out)
    assert "edgec[sweep]" in result.stderr
