"""Benchmarks on a remote device over SSH: ship the build and the device runner, run it, bring the results back.

The device needs Python 3.10+, numpy and the artifacts' runtime, nothing from edgec: ``device.py`` is copied on
its own. Latency comes from the device; accuracy is computed here, from the outputs the device sends back, against
the same reference the local ``bench_artifacts`` would use (the FP32 artifact's device outputs by default, or a
torch checkpoint / ONNX file run on this machine). Every failure raises ``RemoteError`` (exit code 5) naming the
host, and leaves nothing behind: no local results and, while the connection lives, no remote temp folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgec.benchmarks import device
from edgec.benchmarks.harness import load_build, score_runs
from edgec.benchmarks.latency import summarize
from edgec.benchmarks.results import BenchResults, RunResult, build_records
from edgec.compiler.errors import CalibrationError, ConfigError, InputFileError, TargetUnavailableError
from edgec.compiler.types import Artifact, Feeds

Progress = Callable[[str], None]

#: The name the runner gets on the device.
RUNNER_NAME = "edgec_device.py"
CONNECT_TIMEOUT_S = 15.0
#: Any single SFTP read or write that stalls longer than this breaks the run.
IO_TIMEOUT_S = 60.0
#: The whole remote run (every artifact); a hung device fails after this rather than never.
RUN_TIMEOUT_S = 1800.0


class RemoteError(TargetUnavailableError):
    """The device cannot be reached, refuses the key, lacks the runtime, or the run broke off (exit code 5)."""


@dataclasses.dataclass(frozen=True)
class RemoteSpec:
    user: str | None
    host: str
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


_REMOTE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d+))?$")


def parse_remote(text: str) -> RemoteSpec:
    """``user@host[:port]`` (an IPv6 host in brackets: ``user@[::1]:2222``)."""
    m = _REMOTE.match(text.strip())
    port = int(m["port"]) if m and m["port"] else 22
    if not m or not 0 < port < 65536:
        raise ConfigError(f"cannot parse --remote '{text}'", hint="write user@host or user@host:port")
    return RemoteSpec(m["user"], m["v6"] or m["host"], port)


def runner_files() -> dict[str, Path]:
    """What is shipped to run on a device: remote name -> local file. The runner imports nothing else of edgec."""
    return {RUNNER_NAME: Path(device.__file__)}


def write_data(eval_feeds: list[Feeds], path: Path) -> Path:
    """The evaluation samples as the device runner reads them: one array per input, samples stacked."""
    if not eval_feeds:
        raise CalibrationError("no evaluation samples", hint="pass evaluation data with at least one sample")
    arrays: dict[str, np.ndarray] = {}
    batch = None
    for name in eval_feeds[0]:
        parts = [np.asarray(f[name]) for f in eval_feeds]
        rows = {p.shape[0] if p.ndim else 0 for p in parts}
        if len(rows) != 1 or 0 in rows or (batch is not None and rows != {batch}):
            raise CalibrationError(
                f"input '{name}': evaluation samples of different batch sizes {sorted(rows)} cannot be sent to a device",
                hint="give samples with the same leading (batch) dimension",
            )
        batch = rows.pop()
        arrays[name] = np.concatenate(parts)
    np.savez(path, __batch__=np.array(batch), **arrays)
    return path


def _bundle_files(path: Path, artifacts: list[Artifact], staging: Path) -> dict[str, Path]:
    """Remote relative path -> local file for a build folder, or for one artifact with a manifest made here."""
    path = path.parent if path.is_file() and path.name == "manifest.json" else path
    if path.is_dir():
        return {f.relative_to(path).as_posix(): f for f in sorted(path.rglob("*")) if f.is_file()}
    artifact = artifacts[0]
    manifest = staging / "manifest.json"
    manifest.write_text(json.dumps({"artifacts": [artifact.to_dict(root=path.parent)]}), encoding="utf-8")
    return {path.name: path, "manifest.json": manifest}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


class _AcceptNewHostKey:
    """Accept a host missing from known_hosts without saving it (ssh's accept-new, minus the write).

    A host whose known key changed is still refused: paramiko raises BadHostKeyException before asking this.
    """

    def __init__(self, say: Progress):
        self.say = say

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        self.say(f"[remote] {hostname} is not in known_hosts; accepting its {key.get_name()} key {key.fingerprint}")


class RemoteSession:
    """One SSH connection to a device with a private temp folder on it; a context manager that cleans up."""

    def __init__(self, remote: RemoteSpec, identity: str | Path | None = None, *, say: Progress,
                 connect_timeout: float = CONNECT_TIMEOUT_S, io_timeout: float = IO_TIMEOUT_S):
        self.remote = remote
        self.identity = Path(identity).expanduser() if identity else None
        self.say = say
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.client: Any = None
        self.sftp: Any = None
        self.folder = f"/tmp/edgec-bench-{uuid.uuid4().hex[:12]}"
        self._made_folder = False

    def fail(self, what: str, exc: BaseException | str, hint: str) -> RemoteError:
        detail = exc if isinstance(exc, str) else _one_line(exc)
        return RemoteError(f"{what} on {self.remote}: {detail}", hint=hint)

    def __enter__(self) -> RemoteSession:
        try:
            import paramiko
        except ImportError:
            raise RemoteError(
                "edgec bench --remote needs the Python package 'paramiko', which is not installed",
                hint="pip install paramiko==5.1.0",
            ) from None
        if self.identity is not None and not self.identity.is_file():
            raise InputFileError(f"--identity key '{self.identity}' not found", hint="pass a private key file")
        client = paramiko.SSHClient()
        try:
            client.load_system_host_keys()
        except OSError:
            pass
        client.set_missing_host_key_policy(_AcceptNewHostKey(self.say))
        where = f"{self.remote.host}:{self.remote.port}"
        try:
            client.connect(
                self.remote.host, port=self.remote.port, username=self.remote.user,
                key_filename=str(self.identity) if self.identity else None,
                # with --identity use only that key, so a run never depends on what an agent happens to hold
                look_for_keys=self.identity is None, allow_agent=self.identity is None,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
            )
        except paramiko.AuthenticationException as exc:
            client.close()
            raise self.fail(
                f"SSH authentication as '{self.remote.user or 'the current user'}' failed", exc,
                "pass --identity KEY whose public key is in ~/.ssh/authorized_keys on the device",
            ) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self.fail(
                "the device's host key does not match known_hosts", exc,
                f"if the device was reinstalled, run: ssh-keygen -R {self.remote.host}",
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise self.fail(
                f"cannot reach {where}", exc, "check the address and port, and that sshd runs on the device"
            ) from None
        self.client = client
        try:
            self.sftp = client.open_sftp()
            self.sftp.get_channel().settimeout(self.io_timeout)
            self.sftp.mkdir(self.folder, mode=0o700)
            self._made_folder = True
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise self.fail("cannot open SFTP or create a temp folder", exc,
                            "check that the device's sshd offers SFTP and /tmp is writable") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def upload(self, files: Mapping[str, Path]) -> None:
        """Copy local files to ``folder/<relative path>``, creating folders as needed."""
        made = {self.folder}
        try:
            for rel, local in files.items():
                target = PurePosixPath(self.folder, rel)
                for parent in reversed(target.parents):
                    if str(parent).startswith(self.folder) and str(parent) not in made:
                        self.sftp.mkdir(str(parent))
                        made.add(str(parent))
                self.sftp.put(str(local), str(target), confirm=True)
        except Exception as exc:  # noqa: BLE001 - paramiko raises SSHException, OSError, EOFError, socket errors
            if not _is_transfer_error(exc):
                raise
            raise self.fail("the upload broke off", exc, "check the connection and the device's free space, then run again") from None

    def download(self, rel: str, local: Path) -> None:
        try:
            self.sftp.get(str(PurePosixPath(self.folder, rel)), str(local))
        except Exception as exc:  # noqa: BLE001 - see upload
            if not _is_transfer_error(exc):
                raise
            raise self.fail(f"cannot bring back {rel}", exc, "check the connection, then run again") from None

    def execute(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` on the device (quoted for its shell); (exit status, stdout, stderr). -1: no status came back."""
        command = shlex.join(argv)
        try:
            channel = self.client.get_transport().open_session(timeout=self.connect_timeout)
            channel.settimeout(self.io_timeout)
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed and not channel.exit_status_ready():
                    break
                if time.monotonic() > deadline:
                    channel.close()
                    raise self.fail(f"the device runner did not finish within {timeout:.0f} s", "timed out",
                                    "run fewer --iterations or a shorter --duration") from None
                time.sleep(0.02)
            status = channel.recv_exit_status() if channel.exit_status_ready() else -1
            channel.close()
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - see upload
            if not _is_transfer_error(exc):
                raise
            raise self.fail("the connection broke off during the run", exc, "check the connection, then run again") from None
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _remove_folder(self) -> None:
        def rm(path: str) -> None:
            import stat

            for attr in self.sftp.listdir_attr(path):
                child = f"{path}/{attr.filename}"
                if stat.S_ISDIR(attr.st_mode or 0):
                    rm(child)
                else:
                    self.sftp.remove(child)
            self.sftp.rmdir(path)

        rm(self.folder)

    def close(self) -> None:
        if self.sftp is not None and self._made_folder:
            try:
                self._remove_folder()
            except Exception as exc:  # noqa: BLE001 - cleanup of a broken connection must not hide the real error
                if not _is_transfer_error(exc):
                    raise
                self.say(f"[remote] could not remove {self.folder} on {self.remote.host}: {_one_line(exc)}")
            self._made_folder = False
        for closable in (self.sftp, self.client):
            if closable is not None:
                closable.close()
        self.sftp = self.client = None


def _is_transfer_error(exc: BaseException) -> bool:
    import paramiko

    return isinstance(exc, (paramiko.SSHException, OSError, EOFError, socket.timeout))


def _runner_argv(python: str, folder: str, *, warmup: int, iterations: int | None, duration: float | None,
                 threads: int) -> list[str]:
    argv = [python, f"{folder}/{RUNNER_NAME}", f"{folder}/bundle", "--data", f"{folder}/data.npz",
            "--json", f"{folder}/result.json", "--outputs", f"{folder}/outputs.npz",
            "--warmup", str(warmup), "--threads", str(threads)]
    if duration is not None:
        argv += ["--duration", repr(float(duration))]
    else:
        argv += ["--iterations", str(iterations or 100)]
    return argv


def run_on_device(
    path: str | Path, remote: str, eval_feeds: list[Feeds], *, identity: str | Path | None = None,
    remote_python: str | None = None, warmup: int = 10, iterations: int | None = None,
    duration: float | None = None, threads: int = 1, progress: Progress | None = None,
    run_timeout: float = RUN_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run the device runner on ``remote`` for the build at ``path``; its JSON document and its outputs."""
    say = progress or (lambda _msg: None)
    spec = parse_remote(remote)
    python = remote_python or "python3"
    path = Path(path)
    artifacts, _ = load_build(path)
    with tempfile.TemporaryDirectory(prefix="edgec-remote-") as tmp:
        staging = Path(tmp)
        files = {f"bundle/{rel}": local for rel, local in _bundle_files(path, artifacts, staging).items()}
        files.update(runner_files())
        files["data.npz"] = write_data(eval_feeds, staging / "data.npz")
        size = sum(f.stat().st_size for f in files.values())
        say(f"[remote] connecting to {spec}")
        with RemoteSession(spec, identity, say=say, connect_timeout=connect_timeout) as session:
            say(f"[remote] uploading {len(files)} files ({size / 1e6:.1f} MB) to {session.folder}")
            session.upload(files)
            say(f"[remote] running the device runner with {python}")
            argv = _runner_argv(python, session.folder, warmup=warmup, iterations=iterations,
                                duration=duration, threads=threads)
            status, _out, err = session.execute(argv, timeout=run_timeout)
            _check_status(status, err, spec, python)
            session.download("result.json", staging / "result.json")
            session.download("outputs.npz", staging / "outputs.npz")
        try:
            doc = json.loads((staging / "result.json").read_text(encoding="utf-8"))
            with np.load(staging / "outputs.npz", allow_pickle=False) as f:
                outputs = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise RemoteError(f"the device runner on {spec} sent back unreadable results: {_one_line(exc)}",
                              hint="run again; if it persists, report it") from None
    if not isinstance(doc, dict) or doc.get("schema") != device.SCHEMA:
        raise RemoteError(f"the device runner on {spec} wrote results of another schema "
                          f"({doc.get('schema') if isinstance(doc, dict) else type(doc).__name__})",
                          hint="use the same edgec version on both ends")
    for line in err.splitlines():
        say(f"[device] {line}")
    return doc, outputs


def _check_status(status: int, err: str, spec: RemoteSpec, python: str) -> None:
    if status == 0:
        return
    last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
    last = last.removeprefix("error: ")
    if status == 127:
        raise RemoteError(f"'{python}' not found on {spec}: {last}",
                          hint="pass --remote-python with the path of a Python 3.10+ on the device")
    if status == device.EXIT_UNAVAILABLE:
        raise RemoteError(f"the device {spec} lacks a runtime: {last}",
                          hint="install it on the device, or pass --remote-python with a Python that has it")
    if status == -1:
        raise RemoteError(f"the device runner on {spec} ended without an exit status (connection lost or killed)",
                          hint="check the device and the connection, then run again")
    raise RemoteError(f"the device runner on {spec} failed (exit {status}): {last or 'no message'}",
                      hint="run again with --remote-python pointing at a Python 3.10+ with numpy and the runtime")


def merge(
    doc: dict[str, Any], outputs: dict[str, np.ndarray], artifacts: list[Artifact], eval_feeds: list[Feeds], *,
    remote: str, reference: Callable[[Feeds], Mapping[str, Any]] | None = None,
    reference_artifact: Artifact | None = None, labels: Any = None, reference_name: str | None = None,
    data_source: str = "", threads: int = 1, progress: Progress | None = None,
) -> BenchResults:
    """BenchResults from the device runner's document and outputs, with accuracy computed here."""
    say = progress or (lambda _msg: None)
    if reference is not None and reference_artifact is not None:
        raise ConfigError("give a reference function or a reference artifact, not both")
    by_name = {a.name: a for a in artifacts}
    env = dict(doc.get("environment") or {})
    runs: list[RunResult] = []
    run_arts: list[Artifact] = []
    run_outs: list[list[dict[str, np.ndarray]]] = []
    for i, rec in enumerate(doc.get("runs", [])):
        art = by_name[rec["name"]]
        stats = summarize(rec["latencies_ms"], batch=int(doc.get("batch", 1)), warmup=int(rec.get("warmup", 0)))
        stats.peak_rss_bytes = rec.get("peak_rss_bytes")
        stats.peak_rss_delta_bytes = rec.get("peak_rss_delta_bytes")
        runs.append(RunResult(
            name=rec["name"], path=str(art.path), format=rec["format"], precision=rec["precision"],
            target=rec["target"], runtime=rec["runtime"], size_bytes=int(rec["size_bytes"]), sha256=rec["sha256"],
            threads=rec.get("threads"), latency=stats, environment={**env, "runtime": rec["runtime"],
                                                                     "remote": remote},
            started_at=rec.get("started_at", ""), build=build_records(art.metadata),
        ))
        names = rec["outputs"]
        run_outs.append([
            {n: outputs[f"a{i}.s{j}.o{k}"] for k, n in enumerate(names)} for j in range(int(doc["samples"]))
        ])
        run_arts.append(art)
    for skipped in doc.get("skipped", []):
        say(f"[remote] {skipped['name']}: skipped on the device ({skipped['reason']})")
    if not runs:
        raise ConfigError(f"the device {remote} ran none of the build's artifacts",
                          hint="benchmark ONNX or TFLite artifacts, or run edgec bench on the device itself")

    described = score_runs(
        run_arts, runs, run_outs, eval_feeds, reference=reference, reference_artifact=reference_artifact,
        reference_name=reference_name, labels=labels, threads=threads, say=say,
        default_name=lambda a: f"{a.name} on the device",
    )
    settings = doc.get("settings") or {}
    return BenchResults(
        runs=runs,
        reference=described,
        data_source=data_source,
        samples=len(eval_feeds),
        metadata={
            "warmup": settings.get("warmup"), "iterations": settings.get("iterations"),
            "duration_s": settings.get("duration_s"), "threads": settings.get("threads"),
            "remote": remote, "device": env,
        },
    )


def bench_remote(
    path: str | Path, remote: str, eval_feeds: list[Feeds], *, identity: str | Path | None = None,
    remote_python: str | None = None, reference: Callable[[Feeds], Mapping[str, Any]] | None = None,
    reference_artifact: Artifact | None = None, labels: Any = None, warmup: int = 10,
    iterations: int | None = None, duration: float | None = None, threads: int = 1,
    progress: Progress | None = None, reference_name: str | None = None, data_source: str = "",
    run_timeout: float = RUN_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S,
) -> BenchResults:
    """``bench_artifacts`` for a build run on ``remote`` (``user@host[:port]``) over SSH.

    Args mirror ``bench_artifacts``; besides them: ``identity`` a private key (the only key tried when given),
    ``remote_python`` the device's Python (default ``python3``), and bounded ``run_timeout`` (the whole remote
    run) and ``connect_timeout`` (TCP connect, SSH banner and authentication) in seconds.
    """
    if iterations is not None and duration is not None:
        raise ConfigError("--iterations and --duration exclude each other", hint="give one of them")
    artifacts, _ = load_build(path)
    doc, outputs = run_on_device(
        path, remote, eval_feeds, identity=identity, remote_python=remote_python, warmup=warmup,
        iterations=iterations, duration=duration, threads=threads, progress=progress, run_timeout=run_timeout,
        connect_timeout=connect_timeout,
    )
    return merge(
        doc, outputs, artifacts, eval_feeds, remote=str(parse_remote(remote)), reference=reference,
        reference_artifact=reference_artifact, labels=labels, reference_name=reference_name,
        data_source=data_source, threads=threads, progress=progress,
    )
