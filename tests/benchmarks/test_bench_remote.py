"""edgec bench --remote against a real OpenSSH server started here on loopback, with its own keys and config."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason=f"{SSHD} missing: apt-get install openssh-server"),
    pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen missing: apt-get install openssh-client"),
]
paramiko = pytest.importorskip("paramiko", reason="edgec bench --remote needs paramiko (see requirements.txt)")

from edgec.benchmarks.remote import RemoteError, bench_remote, parse_remote  # noqa: E402
from edgec.compiler.errors import ConfigError  # noqa: E402
from test_bench_device import make_venv, tiny_build  # noqa: E402,F401 - the build fixture is shared

USER = getpass.getuser()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


class Sshd:
    """sshd in the foreground on 127.0.0.1:<free port>, key auth only, everything in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.client_key = _keygen(folder / "client_key")
        self.other_key = _keygen(folder / "other_key")
        host_key = _keygen(folder / "host_key")
        (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", f"PidFile {folder / 'sshd.pid'}",
            "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation folder sshd insists on
        self.log = open(folder / "sshd.log", "w")
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-e"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip(f"sshd did not start: {(folder / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.skip("sshd did not listen within 15 s")

    @property
    def remote(self) -> str:
        return f"{USER}@127.0.0.1:{self.port}"

    def kill_all(self) -> None:
        """Kill the listener and every connection it forked (each calls setsid, so no process group to kill)."""
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    """The device's Python: a venv with numpy and onnxruntime only (no torch, no edgec)."""
    return make_venv(tmp_path_factory, "device", ["numpy==2.4.6", "onnxruntime==1.32.0"])


def _leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgec-bench-*")}


def _bench(build, sshd_server, **kw):
    out, _, _, feeds = build
    kw.setdefault("identity", sshd_server.client_key)
    kw.setdefault("iterations", 5)
    kw.setdefault("warmup", 1)
    return bench_remote(out, kw.pop("remote", sshd_server.remote), feeds, connect_timeout=5, run_timeout=120, **kw)


def test_parse_remote():
    assert str(parse_remote("pi@jetson.local")) == "pi@jetson.local:22"
    assert str(parse_remote("root@[::1]:2222")) == "root@::1:2222"
    with pytest.raises(ConfigError):
        parse_remote("a@b:99999")


@pytest.mark.slow
def test_full_remote_run_in_a_venv_without_torch(tiny_build, sshd, device_python):  # noqa: F811
    before = _leftovers()
    lines: list[str] = []
    results = _bench(tiny_build, sshd, remote_python=str(device_python), progress=lines.append)
    assert [r.name for r in results] == ["cpu/fp32", "cpu/int8"]
    fp32, int8 = results.by_name("cpu/fp32"), results.by_name("cpu/int8")
    assert fp32.is_reference and int8.accuracy.primary.cosine > 0.9 and int8.latency.iterations == 5
    env = int8.environment
    assert env["python_executable"] == str(device_python) and env["remote"] == sshd.remote
    assert env["runtimes"]["onnxruntime"].startswith("onnxruntime 1.32.0") and env["cpu"]
    assert results.metadata["remote"] == sshd.remote and results.metadata["device"]["os"]
    assert any("uploading" in ln for ln in lines)
    assert _leftovers() == before  # the remote temp folder is gone


def test_unreachable_host_fails_fast_and_names_it(tiny_build):  # noqa: F811
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        bench_remote(tiny_build[0], f"{USER}@127.0.0.1:{port}", tiny_build[3], connect_timeout=5)
    assert f"127.0.0.1:{port}" in str(err.value) and "cannot reach" in str(err.value)
    assert err.value.exit_code == 5 and "\n" not in str(err.value) and time.monotonic() - start < 10


def test_wrong_key_is_an_authentication_error(tiny_build, sshd):  # noqa: F811
    with pytest.raises(RemoteError) as err:
        _bench(tiny_build, sshd, identity=sshd.other_key)
    assert "authentication" in str(err.value) and sshd.remote in str(err.value)
    assert "--identity" in err.value.hint and err.value.exit_code == 5


@pytest.mark.slow
def test_device_without_the_runtime(tiny_build, sshd, tmp_path_factory):  # noqa: F811
    numpy_only = make_venv(tmp_path_factory, "numpy-only", ["numpy==2.4.6"])
    before = _leftovers()
    with pytest.raises(RemoteError) as err:
        _bench(tiny_build, sshd, remote_python=str(numpy_only))
    assert "lacks a runtime" in str(err.value) and "onnxruntime" in str(err.value) and sshd.remote in str(err.value)
    assert err.value.exit_code == 5 and _leftovers() == before


def test_device_python_missing(tiny_build, sshd):  # noqa: F811
    with pytest.raises(RemoteError) as err:
        _bench(tiny_build, sshd, remote_python="/nonexistent/python3")
    assert "not found" in str(err.value) and "--remote-python" in err.value.hint


def test_runner_that_dies_leaves_no_result(tiny_build, sshd, tmp_path):  # noqa: F811
    dying = tmp_path / "dying-python"
    dying.write_text("#!/bin/sh\nkill -9 $$\n")
    dying.chmod(0o755)
    before = _leftovers()
    with pytest.raises(RemoteError) as err:
        _bench(tiny_build, sshd, remote_python=str(dying))
    assert "without an exit status" in str(err.value) and _leftovers() == before


def test_connection_killed_mid_upload(tiny_build, tmp_path):  # noqa: F811
    out, data, artifacts, feeds = tiny_build
    build = tmp_path / "big-build"
    shutil.copytree(out, build)
    (build / "padding.bin").write_bytes(os.urandom(8 << 20))  # makes the upload long enough to cut
    server = Sshd(tmp_path / "sshd")

    def cut(line: str) -> None:
        if "uploading" in line:
            server.kill_all()

    try:
        with pytest.raises(RemoteError) as err:
            bench_remote(build, server.remote, feeds, identity=server.client_key, progress=cut, connect_timeout=5)
    finally:
        server.stop()
    assert "upload broke off" in str(err.value) and server.remote in str(err.value)
    assert err.value.exit_code == 5


def test_cli_passes_remote_options_and_writes_nothing_on_failure(tiny_build, tmp_path, monkeypatch):  # noqa: F811
    from click.testing import CliRunner

    from edgec import api
    from edgec.cli import cli

    seen = {}

    def failing_bench(*args, **kw):
        seen.update(kw)
        raise RemoteError("cannot reach 127.0.0.1:1: refused", hint="check the address")

    monkeypatch.setattr(api, "bench", failing_bench)
    result = CliRunner().invoke(cli, [
        "bench", str(tiny_build[0]), "--data", str(tiny_build[1]), "--remote", "me@127.0.0.1:1",
        "--identity", "k", "--remote-python", "/opt/py", "--json", str(tmp_path / "r.json"),
    ])
    assert result.exit_code == 5 and "cannot reach 127.0.0.1:1" in result.output
    assert seen["remote"] == "me@127.0.0.1:1" and str(seen["identity"]) == "k" and seen["remote_python"] == "/opt/py"
    assert not (tmp_path / "r.json").exists()
    no_remote = CliRunner().invoke(cli, ["bench", str(tiny_build[0]), "--data", "x", "--identity", "k"])
    assert no_remote.exit_code == 2 and "--remote" in no_remote.output


@pytest.mark.slow
def test_cli_end_to_end(tiny_build, sshd, device_python, tmp_path):  # noqa: F811
    import inspect

    from click.testing import CliRunner

    from edgec import api
    from edgec.cli import cli

    if "remote" not in inspect.signature(api.bench).parameters:
        pytest.skip("edgec.api.bench has no 'remote' parameter yet (see benchmarks/remote.py)")
    result = CliRunner().invoke(cli, [
        "bench", str(tiny_build[0]), "--data", str(tiny_build[1]), "--iterations", "5", "--remote", sshd.remote,
        "--identity", str(sshd.client_key), "--remote-python", str(device_python), "--json", str(tmp_path / "r.json"),
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["metadata"]["remote"] == sshd.remote and len(doc["runs"]) == 2
    assert np.isfinite(doc["runs"][1]["latency"]["p50_ms"])
