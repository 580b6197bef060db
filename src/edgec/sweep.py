"""edgec sweep: search prune ratio x precision x calibration method x target for the Pareto front.

Optuna drives the search (a grid for small spaces, NSGA-II for large ones) and keeps the study in RDB storage
(a SQLite file in the output folder by default), so a killed sweep resumes where it stopped. Each trial is a Ray
task (``edgec build`` + ``edgec bench`` through the API) in its own folder, sharing edgec's build cache. The
Pareto candidates are re-measured side by side at the end (the harness's interleaved rounds), because trials
timed in parallel disturb each other.

Nothing heavy at import time: ray and optuna are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from edgec.compiler.context import Reporter, silent_reporter
from edgec.compiler.errors import ConfigError, EdgecError, InputFileError, TargetUnavailableError, missing_dependency
from edgec.recipe import Recipe, _check, _field

STUDY = "edgec-sweep"
STORAGE_FILE = "sweep.db"
RESULTS_JSON = "sweep.json"
RESULTS_MD = "sweep.md"
RESULTS_HTML = "sweep.html"
LOCK_FILE = ".sweep.lock"
TRIALS_DIR = "trials"
#: Each trial's result lives in the study's user attributes under this key (the trial number is the key that
#: makes a retried or resumed trial count once).
RESULT_ATTR = "edgec_result"
OBJECTIVES = ("accuracy_drop", "p50_ms", "size_bytes")


class ClusterError(TargetUnavailableError):
    """The Ray cluster or the study's storage cannot be reached (exit 5)."""


@dataclasses.dataclass
class SweepOptions:
    """The search space and the sweep's settings: the ``sweep:`` section of a recipe, and ``edgec sweep``'s flags."""

    prune: list[float] = _field([0.0], "Prune ratios to try (0: no pruning), comma-separated or repeated.",
                                metavar="R[,R...]")
    precision: list[str] = _field(["fp32", "int8"], "Precisions to try (comma-separated or repeated).", short="-p",
                                  metavar="P[,P...]")
    calibration_method: list[str] = _field(["minmax"], "INT8 calibration methods to try (comma-separated or "
                                           "repeated).", choices="edgec.compiler.stages.calibrate:METHODS",
                                           metavar="M[,M...]")
    target: list[str] = _field(["cpu"], "Targets/profiles to try (comma-separated or repeated).", short="-t",
                               metavar="T[,T...]")
    max_accuracy_drop: float | None = _field(None, "Constraint: points of the headline task metric a build may "
                                             "lose against the FP32 checkpoint.", metavar="PTS")
    max_latency_ms: float | None = _field(None, "Constraint: highest p50 latency.", metavar="MS")
    grid_limit: int = _field(64, "Spaces of at most this many points run as a full grid; larger ones run "
                             "NSGA-II for --trials trials.", metavar="N")
    trials: int = _field(32, "Trials of the multi-objective search (spaces larger than --grid-limit).", metavar="N")
    workers: int | None = _field(None, "CPUs of the local Ray instance, one trial each (default: all cores).",
                                 metavar="N")
    ray_address: str | None = _field(None, "An existing Ray cluster (HOST:PORT) instead of a local instance; "
                                     "trials must see the same paths (a shared folder).", metavar="HOST:PORT")
    storage: str | None = _field(None, "Optuna storage URL (default: sqlite:///OUT/sweep.db).", metavar="URL")
    retries: int = _field(2, "Times Ray reruns a trial whose worker died.", metavar="N")
    warmup: int = _field(5, "Untimed runs before each latency measurement.")
    iterations: int = _field(50, "Timed runs per trial, and per artifact and round when re-measuring.")
    rounds: int = _field(3, "Round-robin rounds when re-measuring the Pareto candidates side by side.")
    samples: int | None = _field(None, "Evaluate on N samples of --data, drawn with the recipe's seed.", metavar="N")

    def __post_init__(self) -> None:
        for name in ("prune", "precision", "calibration_method", "target"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, [str(v) if name != "prune" else v for v in _split(list(value))])
        _check(self)
        self.prune = [_number(v, "--prune") for v in self.prune]
        for name in ("prune", "precision", "calibration_method", "target"):
            if not getattr(self, name):
                raise ConfigError(f"the search space has no {name.replace('_', ' ')} values",
                                  hint=f"give at least one --{name.replace('_', '-')}")
        for r in self.prune:
            if not 0.0 <= r < 1.0:
                raise ConfigError(f"--prune {r:g}: a prune ratio must be at least 0 and below 1",
                                  hint="e.g. --prune 0,0.25,0.5 (0: the unpruned model)")
        for name in ("grid_limit", "trials", "workers", "iterations", "rounds", "samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}",
                                  hint=f"e.g. --{name.replace('_', '-')} {getattr(type(self), name, None) or 1}")
        for name in ("retries", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be 0 or more, not {getattr(self, name)}",
                                  hint=f"e.g. --{name} {getattr(type(self), name)}")
        for name in ("max_accuracy_drop", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, not {value}",
                                  hint="a constraint is an upper bound: give a positive figure, or leave it out")
        if self.ray_address and self.workers:
            raise ConfigError("--workers sizes a local Ray instance; an existing cluster (--ray-address) has its own",
                              hint="drop --workers, or drop --ray-address")

    @classmethod
    def from_values(cls, file_values: dict[str, Any], flag_values: dict[str, Any]) -> SweepOptions:
        """The recipe's ``sweep:`` mapping, then the flags given on the command line (None and () mean not given)."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in file_values:
            if key not in known:
                raise ConfigError(f"unknown key '{key}' in the recipe's sweep section",
                                  hint=f"valid keys: {', '.join(sorted(known))}")
        merged = dict(file_values)
        for key, value in flag_values.items():
            if value is None or value == () or value == []:
                continue
            merged[key] = list(value) if isinstance(value, tuple) else value
        for f in dataclasses.fields(cls):
            if f.type.startswith("list") and isinstance(merged.get(f.name), (str, int, float)):
                merged[f.name] = [merged[f.name]]
        return cls(**merged)


def _split(values: list[Any]) -> list[Any]:
    """Comma-separated flag values ("0,0.25") and recipe lists alike, duplicates dropped, order kept."""
    out: list[Any] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else out.append(v)
    return list(dict.fromkeys(out))


def _number(value: Any, option: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} '{value}' is not a number", hint=f"e.g. {option} 0,0.25") from None


#: Recipe keys that only pruning (and the distillation of the pruned model) uses.
_PRUNE_ONLY = ("prune_criterion", "prune_global", "prune_round_to", "protect", "distill", "train_data",
               "train_labels", "hard_label_weight", "feature_layers", "tensorboard")


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of the space: what a trial builds."""

    target: str
    precision: str
    calibration_method: str | None  # None: the precision needs no calibration
    prune: float

    @property
    def key(self) -> str:
        return f"{self.target}/{self.precision}/{self.calibration_method or '-'}/prune={self.prune:g}"

    def recipe(self, base: Recipe, out: Path) -> Recipe:
        values = base.to_dict()
        values.update(target=[self.target], precision=[self.precision], out=str(out), verify=False,
                      prune=self.prune or None, sweep={})
        if not self.prune:
            # The unpruned point of a recipe that distills its pruned points: pruning's and distillation's
            # options do not apply to it (and build refuses them without pruning).
            defaults = {f.name: f for f in dataclasses.fields(Recipe)}
            for key in _PRUNE_ONLY:
                f = defaults[key]
                values[key] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if self.calibration_method:
            values["calibration_method"] = self.calibration_method
        return Recipe(**values)

    def command(self, base: Recipe, out: Path, config: Path | None) -> str:
        """The ``edgec build`` command line that reproduces this point's artifact. With a recipe, the build's
        own resolved recipe (flags cannot switch off the recipe's distillation for an unpruned point)."""
        if config:
            return shlex.join(["edgec", "build", "--config", str(out / "recipe.yaml")])
        args = ["edgec", "build", str(base.checkpoint), "--target", self.target, "-p", self.precision]
        if self.precision == "int8":
            args += ["--calib", str(base.calib), "--calibration-method", str(self.calibration_method)]
        if self.prune:
            args += ["--prune", f"{self.prune:g}"]
            if base.model_factory:
                args += ["--model-factory", base.model_factory]
        for spec in base.inputs:
            args += ["--input", spec]
        if base.seed:
            args += ["--seed", str(base.seed)]
        return shlex.join([*args, "--no-verify", "--out", str(out)])


def plan_points(base: Recipe, options: SweepOptions, report: Reporter = silent_reporter) -> list[Point]:
    """Every valid point of the space. A target/precision pair the target does not support is left out (said);
    anything else wrong (an unknown target, pruning a traced graph without --model-factory, INT8 without
    --calib) is an error, and so is a space with no valid point."""
    from edgec.api import plan_build
    from edgec.targets.registry import resolve_target

    for name in options.target:
        resolve_target(name)
    probe = Path(tempfile.gettempdir()) / f"edgec-sweep-probe-{uuid.uuid4().hex}"  # never made: planning only checks
    pairs, skipped = [], []
    for target in options.target:
        for precision in options.precision:
            try:
                plan_build(Point(target, precision, None, 0.0).recipe(base, probe / "x"))
            except ConfigError as exc:
                if "does not support" not in exc.message:
                    raise
                skipped.append(f"{target}/{precision} ({exc.message})")
                continue
            pairs.append((target, precision))
    if not pairs:
        raise ConfigError(f"the search space has no buildable point: {'; '.join(skipped)}",
                          hint="pick precisions the targets support (see: edgec targets)")
    if skipped:
        report(f"[sweep] left out: {'; '.join(skipped)}")
    points = []
    for target, precision in pairs:
        methods = options.calibration_method if precision == "int8" else [None]
        for method in methods:
            for ratio in options.prune:
                points.append(Point(target, precision, method, ratio))
    # The pruning and calibration options are checked once per value, on the first pair.
    for ratio in options.prune:
        plan_build(Point(*pairs[0], options.calibration_method[0], ratio).recipe(base, probe / "x"))
    return points


# --- the trial: runs in a Ray worker ------------------------------------------------------------------------


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one point and benchmark it (in a Ray worker). Returns the figures, or ``{"error": ...}`` for a
    build or benchmark that failed on the user's side (an EdgecError); anything else is a bug and raises."""
    from edgec.api import bench, build

    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    import ray

    # One line per attempt (worker pid, time, Ray node): a trial Ray retried after its worker died shows two.
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
    with open(out.parent / f"{out.name}.attempts", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {time.time():.3f} {node}\n")
    started = time.monotonic()
    try:
        recipe = Recipe(**spec["recipe"])
        result = build(recipe, cache_dir=Path(spec["cache_dir"]) if spec.get("cache_dir") else None)
        results = bench(
            result.out, spec["data"], labels=spec.get("labels"), samples=spec.get("samples"), seed=recipe.seed,
            reference=str(recipe.checkpoint), model_factory=recipe.model_factory, warmup=spec["warmup"],
            iterations=spec["iterations"], threads=1,
        )
    except EdgecError as exc:
        return {"error": f"{type(exc).__name__}: {exc.message}", "pid": os.getpid()}
    run = results.runs[0]
    acc = run.accuracy
    drop = None if acc is None else acc.accuracy_drop
    if drop is None:
        return {"error": "the benchmark gave no accuracy drop (no headline task metric): pass --labels, or declare "
                "the output's task in the recipe (outputs:)", "pid": os.getpid()}
    return {
        "accuracy_drop": float(drop),
        "drop_basis": acc.drop_basis,
        "accuracy": acc.accuracy,
        "p50_ms": run.latency.p50_ms,
        "size_bytes": run.size_bytes,
        "artifact": run.path,
        "runtime": run.runtime,
        "seconds": round(time.monotonic() - started, 2),
        "pid": os.getpid(),
        "host": os.uname().nodename,
    }


# --- the driver ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    out: Path
    trials: list[dict[str, Any]]
    summary: dict[str, Any]


def _imports() -> tuple[Any, Any]:
    try:
        import optuna
    except ImportError:
        raise missing_dependency("optuna", "sweep", "edgec sweep") from None
    try:
        import ray
    except ImportError:
        raise missing_dependency("ray", "sweep", "edgec sweep") from None
    return optuna, ray


def _fingerprint(base: Recipe, points: list[Point], grid: bool) -> dict[str, Any]:
    from edgec.compiler.stages.load import checkpoint_key

    return {"checkpoint_sha256": checkpoint_key(Path(base.checkpoint)), "space": sorted(p.key for p in points),
            "sampler": "grid" if grid else "nsga2"}


def _probe(address: str) -> None:
    """Fail fast (exit 5) when nothing answers at a Ray address: ray.init would retry for a minute."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address '{address}' is not HOST:PORT", hint="e.g. --ray-address 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address}: {exc.strerror or exc}",
                           hint="start one with `ray start --head --port=PORT`, or drop --ray-address for a local "
                           "instance") from None


def _connect(ray: Any, options: SweepOptions, report: Reporter) -> int:
    """Start a local Ray instance or join a cluster; returns how many trials may run at once."""
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if options.ray_address:
            _probe(options.ray_address)
            ray.init(address=options.ray_address, **kwargs)
        else:
            ray.init(num_cpus=options.workers or os.cpu_count() or 1, **kwargs)
    except EdgecError:
        raise
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ... depending on what failed
        where = options.ray_address or "a local instance"
        raise ClusterError(f"Ray could not start or join {where}: {' '.join(str(exc).split())[:300]}",
                           hint="check the address and that every node runs the same Ray version and RAY_AUTH_MODE"
                           ) from None
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    report(f"[sweep] Ray: {options.ray_address or 'local instance'}, {slots} trial slot(s)")
    return slots


def _storage(optuna: Any, url: str) -> Any:
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else {})
    except Exception as exc:  # sqlalchemy's and optuna's own errors
        raise ClusterError(f"cannot open the study storage {url}: {' '.join(str(exc).split())[:300]}",
                           hint="check the --storage URL and that the database answers") from None


def _open_study(optuna: Any, storage: Any, url: str, resume: bool, fingerprint: dict[str, Any], sampler: Any) -> Any:
    names = optuna.study.get_all_study_names(storage)
    if STUDY not in names:
        if resume:
            raise ConfigError(f"--resume: the storage {url} holds no sweep to resume",
                              hint="run the sweep without --resume first")
        study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                    directions=["minimize"] * len(OBJECTIVES))
        for key, value in fingerprint.items():
            study.set_user_attr(key, value)
        return study
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler)
    if not resume:
        raise ConfigError(f"the storage {url} already holds a sweep",
                          hint="pass --resume to continue it, or choose a new --out (or --storage)")
    stored = study.user_attrs
    if stored.get("checkpoint_sha256") != fingerprint["checkpoint_sha256"]:
        raise ConfigError(
            f"the storage {url} holds a sweep of another model (checkpoint sha256 "
            f"{str(stored.get('checkpoint_sha256'))[:12]}..., this one {fingerprint['checkpoint_sha256'][:12]}...)",
            hint="resume with the model that sweep was started with, or start a new sweep in a new --out",
        )
    if stored.get("space") != fingerprint["space"] or stored.get("sampler") != fingerprint["sampler"]:
        raise ConfigError(f"the storage {url} holds a sweep over another search space",
                          hint="resume with the same --prune/-p/--calibration-method/--target, or start a new --out")
    return study


def _lock(out: Path) -> Any:
    """An exclusive lock on the output folder for the driver's life: two sweeps never write one study."""
    import fcntl

    handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open until the sweep ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"another edgec sweep is running on '{out}'", hint="wait for it, or choose another --out"
                          ) from None
    return handle


def sweep(
    base: Recipe,
    options: SweepOptions,
    data: str,
    out: Path,
    *,
    labels: str | None = None,
    resume: bool = False,
    cache_dir: Path | None = None,
    config: Path | None = None,
    report: Reporter = silent_reporter,
) -> SweepResult:
    """Run ``edgec sweep``: every trial's figures and the Pareto front in ``out`` (sweep.json, sweep.md)."""
    from edgec.compiler.cache import default_cache_dir

    started = time.monotonic()
    base, data, labels, out = _checked_paths(base, data, labels, out, resume, options)
    url = options.storage or f"sqlite:///{out / STORAGE_FILE}"
    points = plan_points(base, options, report)
    grid = len(points) <= options.grid_limit
    fingerprint = _fingerprint(base, points, grid)
    optuna, ray = _imports()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if grid:
        sampler = _grid_sampler(optuna, [p.key for p in points], base.seed)
        total = len(points)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=base.seed,
                                                population_size=min(20, max(4, options.trials // 4)))
        total = options.trials
    if options.storage and not resume:
        # A shared database: refuse an existing study before creating anything.
        if STUDY in optuna.study.get_all_study_names(_storage(optuna, url)):
            raise ConfigError(f"the storage {url} already holds a sweep",
                              hint="pass --resume to continue it, or use another --storage")
    lock = study = None
    if resume:
        # Checked before Ray starts: a storage from another model or space fails fast, and changes nothing.
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
        try:
            study = _open_study(optuna, _storage(optuna, url), url, resume, fingerprint, sampler)
        except BaseException:
            lock.close()
            raise
    try:
        slots = _connect(ray, options, report)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    try:
        if study is None:
            # A new sweep writes nothing until Ray answers.
            out.mkdir(parents=True, exist_ok=True)
            lock = _lock(out)
            study = _open_study(optuna, _storage(optuna, url), url, resume, fingerprint, sampler)
        mode = "grid" if grid else f"NSGA-II, {total} trials"
        report(f"[sweep] {len(points)} point(s), {mode}; study in {url}")
        spec = {"data": str(data), "labels": str(labels) if labels else None, "samples": options.samples,
                "warmup": options.warmup, "iterations": options.iterations,
                "cache_dir": str(cache_dir or default_cache_dir())}
        by_key = {p.key: p for p in points}
        _run_trials(optuna, ray, study, by_key, base, options, spec, out, total, slots, report)
        trials = _collect(optuna, study, by_key, base, out, config, options)
        _remeasure(trials, data, base, options, report)
        summary = {
            "model": {"checkpoint": str(base.checkpoint), "sha256": fingerprint["checkpoint_sha256"]},
            "storage": url, "study": STUDY, "sampler": fingerprint["sampler"], "points": len(points),
            "slots": slots, "ray_address": options.ray_address, "wall_s": round(time.monotonic() - started, 2),
            "options": dataclasses.asdict(options) | {"storage": url},
            "objectives": list(OBJECTIVES),
            "latency_note": "p50_ms_trial: measured inside the trial, while other trials ran in parallel; "
                            "p50_ms_remeasured: Pareto candidates only, re-measured side by side after the trials "
                            f"({options.rounds} interleaved rounds x {options.iterations} runs, one thread); the "
                            "front uses the re-measured figures",
        }
        _write(out, trials, summary)
        return SweepResult(out, trials, summary)
    finally:
        ray.shutdown()
        if lock is not None:
            lock.close()


def _grid_sampler(optuna: Any, keys: list[str], seed: int) -> Any:
    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler whose after_trial does not call study.stop(): that only works inside study.optimize, and
        the sweep's ask/tell loop stops by itself once every point is told."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGridSampler({"point": keys}, seed=seed)


def _suggest(trial: Any, by_key: dict[str, Point], grid: bool) -> Point | None:
    """The trial's point (None: NSGA-II asked for a combination that is not in the space)."""
    if grid:
        return by_key[trial.suggest_categorical("point", list(by_key))]
    points = list(by_key.values())
    target = trial.suggest_categorical("target", sorted({p.target for p in points}))
    precision = trial.suggest_categorical("precision", sorted({p.precision for p in points}))
    methods = sorted({p.calibration_method for p in points if p.calibration_method}) or ["-"]
    method = trial.suggest_categorical("calibration_method", methods)
    prune = trial.suggest_categorical("prune", sorted({p.prune for p in points}))
    point = Point(target, precision, method if precision == "int8" else None, prune)
    return by_key.get(point.key)


def _checked_paths(base: Recipe, data: str, labels: str | None, out: Path, resume: bool,
                   options: SweepOptions) -> tuple[Recipe, str, str | None, Path]:
    """The recipe, data, labels and output folder with absolute paths (trials may run on other nodes, in other
    folders, and the reproducing commands must work from anywhere), checked to exist; the output folder checked
    for a new sweep or a resumed one."""
    from edgec.recipe import path_keys

    absolute = {k: str(Path(v).resolve()) for k in path_keys()
                if isinstance(v := getattr(base, k), str) and ":" not in v and Path(v).exists()}
    base = dataclasses.replace(base, **absolute)
    data = str(Path(data).resolve()) if ":" not in str(data) and Path(data).exists() else str(data)
    labels = str(Path(labels).resolve()) if labels and Path(labels).exists() else labels
    if not base.checkpoint or not Path(base.checkpoint).is_file():
        raise InputFileError(f"checkpoint '{base.checkpoint}' does not exist", hint="check the path")
    for name, path in (("--data", data), ("--labels", labels)):
        if path and ":" not in str(path) and not Path(path).exists():
            raise InputFileError(f"{name} '{path}' does not exist", hint="check the path")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file", hint="name a folder")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out '{out}' is not empty", hint="pass --resume to continue the sweep there, or choose "
                          "a new folder")
    if resume and not options.storage and not (out / STORAGE_FILE).is_file():
        raise ConfigError(f"--resume: '{out}' holds no sweep ({STORAGE_FILE} is missing)",
                          hint="run the sweep without --resume first")
    return base, data, labels, out


def _run_trials(optuna: Any, ray: Any, study: Any, by_key: dict[str, Point], base: Recipe, options: SweepOptions,
                spec: dict[str, Any], out: Path, total: int, slots: int, report: Reporter) -> None:
    """Ask, run on Ray, tell: each trial number is told once. Trials left running by a killed driver (the lock
    says that driver is gone) are run again under their own number and parameters."""
    from optuna.trial import Trial, TrialState

    grid = isinstance(study.sampler, optuna.samplers.GridSampler)  # the subclass above
    remote = ray.remote(num_cpus=1, max_retries=options.retries)(run_trial)
    existing = study.get_trials(deepcopy=False)
    stale = [t for t in existing if t.state == TrialState.RUNNING]
    if stale:
        report(f"[sweep] resuming {len(stale)} trial(s) the previous driver left running: "
               f"{', '.join(str(t.number) for t in stale)}")
    # A grid asks each point once. NSGA-II often asks again for a point it has seen: such a trial is told the
    # earlier figures and not built, and --trials counts builds (with a cap on asks, should it only repeat).
    builds = sum(1 for t in existing if "point" in t.user_attrs and "duplicate_of" not in t.user_attrs)
    to_build = max(0, total - (len(existing) if grid else builds))
    asks_left = to_build if grid else max(0, 4 * total - len(existing))
    done, failed = (sum(1 for t in existing if t.state == state) for state in (TrialState.COMPLETE, TrialState.FAIL))
    results_by_key = {t.user_attrs["point"]: t for t in existing
                      if t.state == TrialState.COMPLETE and "point" in t.user_attrs}
    in_flight: dict[Any, tuple[Trial, Point]] = {}
    waiting: dict[str, list[Trial]] = {}  # NSGA-II asked for a point that is being built: told with its result

    def submit(trial: Trial, point: Point) -> None:
        trial.set_user_attr("point", point.key)
        job = dict(spec, out=str(out / TRIALS_DIR / f"{trial.number:04d}"),
                   recipe=point.recipe(base, out / TRIALS_DIR / f"{trial.number:04d}").to_dict())
        in_flight[remote.remote(job)] = (trial, point)

    def tell(trial: Trial, result: dict[str, Any]) -> str:
        nonlocal done, failed
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return "already recorded"
        trial.set_user_attr(RESULT_ATTR, result)
        if "error" in result:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            failed += 1
            return f"failed: {result['error']}"
        values = [result[k] for k in OBJECTIVES]
        # NSGA-II prefers feasible trials (a constraint value <= 0 holds).
        if options.max_accuracy_drop is not None:
            trial.set_constraint("max_accuracy_drop", result["accuracy_drop"] - options.max_accuracy_drop)
        if options.max_latency_ms is not None:
            trial.set_constraint("max_latency_ms", result["p50_ms"] - options.max_latency_ms)
        study.tell(trial, values, skip_if_finished=True)
        done += 1
        return (f"drop {result['accuracy_drop']:.2f} pts, p50 {result['p50_ms']:.3f} ms, "
                f"{result['size_bytes'] / 1024:.1f} KiB")

    pending = [Trial(study, t._trial_id) for t in stale]
    # A driver killed between ask and submit leaves a trial without its point: suggesting on it again gives the
    # grid point the sampler assigned it (GridSampler keeps it in the trial), or a new NSGA-II sample.
    stale_points = {t.number: by_key.get(t.user_attrs.get("point", "")) or _suggest(trial, by_key, grid)
                    for t, trial in zip(stale, pending)}
    while True:
        while len(in_flight) < slots and (pending or (to_build and asks_left)):
            if pending:
                trial = pending.pop(0)
                point = stale_points[trial.number]
                if point is None:
                    tell(trial, {"error": "the trial's point is not in the search space"})
                    continue
                submit(trial, point)
                continue
            trial = study.ask()
            asks_left -= 1
            point = _suggest(trial, by_key, grid)
            if point is None:
                tell(trial, {"error": "not a point of the space (a precision the target lacks)"})
                continue
            if point.key in results_by_key:  # NSGA-II asked again for a point already measured
                trial.set_user_attr("point", point.key)
                trial.set_user_attr("duplicate_of", results_by_key[point.key].number)
                tell(trial, {**results_by_key[point.key].user_attrs[RESULT_ATTR],
                             "duplicate_of": results_by_key[point.key].number})
                continue
            if any(p.key == point.key for _, p in in_flight.values()):
                trial.set_user_attr("point", point.key)
                trial.set_user_attr("duplicate_of", next(t.number for t, p in in_flight.values() if p == point))
                waiting.setdefault(point.key, []).append(trial)
                continue
            to_build -= 1
            submit(trial, point)
        if not in_flight:
            break
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            trial, point = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died more often than --retries allows
                result = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            note = tell(trial, result)
            if "error" not in result:
                results_by_key[point.key] = study._storage.get_trial(trial._trial_id)
            for twin in waiting.pop(point.key, []):
                tell(twin, {**result, "duplicate_of": trial.number})
            report(f"[sweep] trial {trial.number} {point.key}: {note} "
                   f"({done} done, {len(in_flight)} running, {failed} failed)")


def _collect(optuna: Any, study: Any, by_key: dict[str, Point], base: Recipe, out: Path, config: Path | None,
             options: SweepOptions) -> list[dict[str, Any]]:
    """Every trial of the study as a row: its point, figures, feasibility, and the command that rebuilds it."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        point = by_key.get(t.user_attrs.get("point", ""))
        result = dict(t.user_attrs.get(RESULT_ATTR) or {})
        trial_out = out / TRIALS_DIR / f"{t.number:04d}"
        attempts = trial_out.parent / f"{trial_out.name}.attempts"
        row = {
            "number": t.number, "state": t.state.name.lower(),
            "point": point.key if point else None,
            **({"target": point.target, "precision": point.precision,
                "calibration_method": point.calibration_method, "prune": point.prune} if point else {}),
            "accuracy_drop": result.get("accuracy_drop"), "drop_basis": result.get("drop_basis"),
            "accuracy": result.get("accuracy"),
            "p50_ms_trial": result.get("p50_ms"), "p50_ms_remeasured": None,
            "size_bytes": result.get("size_bytes"), "build": str(trial_out), "artifact": result.get("artifact"),
            "error": result.get("error"), "duplicate_of": result.get("duplicate_of"),
            "attempts": len(attempts.read_text().splitlines()) if attempts.is_file() else 0,
            "command": point.command(base, trial_out, config) if point else None,
            # The build's own resolved recipe: `edgec build --config` it to repeat the build exactly.
            "recipe": str(trial_out / "recipe.yaml") if (trial_out / "recipe.yaml").is_file() else None,
            "feasible": False, "candidate": False, "pareto": False,
        }
        if t.state.name == "COMPLETE":
            row["feasible"] = _feasible(row, options, "p50_ms_trial")
        rows.append(row)
    return rows


def _feasible(row: dict[str, Any], options: SweepOptions, latency: str) -> bool:
    if options.max_accuracy_drop is not None and row["accuracy_drop"] > options.max_accuracy_drop:
        return False
    return options.max_latency_ms is None or row[latency] <= options.max_latency_ms


def pareto(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows no other row dominates (at least as good on every key, better on one); all keys minimised."""
    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _remeasure(trials: list[dict[str, Any]], data: str, base: Recipe, options: SweepOptions,
               report: Reporter) -> None:
    """Re-time the Pareto candidates side by side (interleaved rounds, one at a time) and draw the front from
    those figures. Duplicate trials (NSGA-II) share their original's artifact and are left out."""
    from edgec.benchmarks.harness import interleaved_latency, load_build
    from edgec.calibration_data import load_dataset

    complete = [r for r in trials if r["state"] == "complete" and r["feasible"] and r["duplicate_of"] is None]
    candidates = pareto(complete, ("accuracy_drop", "p50_ms_trial", "size_bytes"))
    if not candidates:
        return
    for r in candidates:
        r["candidate"] = True
    artifacts = [next(a for a in load_build(r["build"])[0] if str(a.path) == r["artifact"]) for r in candidates]
    evaluation = load_dataset(data, artifacts[0].spec, samples=options.samples, seed=base.seed, role="evaluation")
    report(f"[sweep] re-measuring {len(candidates)} Pareto candidate(s) side by side "
           f"({options.rounds} rounds x {options.iterations} runs)")
    stats = interleaved_latency(artifacts, evaluation.samples, rounds=options.rounds, warmup=options.warmup,
                                iterations=options.iterations)
    for r, s in zip(candidates, stats):
        r["p50_ms_remeasured"] = s.p50_ms
        r["feasible"] = _feasible(r, options, "p50_ms_remeasured")
    for r in pareto([r for r in candidates if r["feasible"]], ("accuracy_drop", "p50_ms_remeasured", "size_bytes")):
        r["pareto"] = True


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def table_rows(trials: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "target", "precision", "calib", "prune", "drop (pts)", "p50 trial (ms)", "p50 re-measured (ms)",
              "size (KiB)", "state", "front"]
    rows = []
    for r in trials:
        rows.append([
            str(r["number"]), r.get("target") or "-", r.get("precision") or "-", r.get("calibration_method") or "-",
            _cell(r.get("prune"), "g"), _cell(r["accuracy_drop"], ".2f"), _cell(r["p50_ms_trial"], ".3f"),
            _cell(r["p50_ms_remeasured"], ".3f"),
            _cell(None if r["size_bytes"] is None else r["size_bytes"] / 1024, ".1f"),
            (f"= #{r['duplicate_of']}" if r["duplicate_of"] is not None else
             r["state"] if r["state"] != "complete" or r["feasible"] else "infeasible"),
            "pareto" if r["pareto"] else ("candidate" if r["candidate"] else ""),
        ])
    return header, rows


def _write(out: Path, trials: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """sweep.json and sweep.md, each replaced whole (written aside, then renamed)."""
    from edgec.benchmarks.report import md_table

    header, rows = table_rows(trials)
    front = [r for r in trials if r["pareto"]]
    lines = ["# edgec sweep", "", md_table(header, rows, numeric_from=4, text_columns=(9, 10)), "", summary["latency_note"] + ".", "",
             "## Pareto front: reproduce with", ""]
    lines += [f"- #{r['number']} `{r['command']}`" for r in front] or ["(no trial met the constraints)"]
    payload = {**summary, "pareto": [r["number"] for r in front], "trials": trials}
    for name, text in ((RESULTS_JSON, json.dumps(payload, indent=2, allow_nan=False) + "\n"),
                       (RESULTS_MD, "\n".join(lines) + "\n"), (RESULTS_HTML, render_html(trials, summary))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def render_html(trials: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """One self-contained page (no script, no network): the table and the report's Pareto plots, drop against
    the re-measured latency (the candidates) and drop against size (every measured trial)."""
    import html

    from edgec.benchmarks.htmlreport import CSS, scatter_plot
    from edgec.benchmarks.htmlreport import Point as PlotPoint

    def point(r: dict[str, Any], latency: float) -> PlotPoint:
        color = "#d62728" if r["pareto"] else ("#1f77b4" if r["candidate"] else "#999999")
        return PlotPoint(f"#{r['number']}", latency, r["size_bytes"], r["accuracy_drop"], color)

    # The front last, so that it is drawn over the trials it ties with.
    measured = sorted((r for r in trials if r["state"] == "complete" and r["duplicate_of"] is None),
                      key=lambda r: (r["pareto"], r["candidate"]))
    remeasured = [point(r, r["p50_ms_remeasured"]) for r in measured if r["p50_ms_remeasured"] is not None]
    everyone = [point(r, r["p50_ms_trial"]) for r in measured]
    header, rows = table_rows(trials)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    front = "".join(f"<li>#{r['number']}: <code>{html.escape(r['command'])}</code></li>" for r in trials if r["pareto"])
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgec sweep</title>',
        f"<style>{CSS}</style></head><body><h1>edgec sweep</h1>",
        f'<p class="meta">{html.escape(str(summary["model"]["checkpoint"]))}: {len(trials)} trials, '
        f'{summary["sampler"]}, {summary["slots"]} trial slot(s), {summary["wall_s"]:.1f} s</p>',
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells}</table>",
        f'<p class="note">{html.escape(summary["latency_note"])}.</p>',
        "<h2>Accuracy drop against re-measured p50 latency (Pareto candidates)</h2>",
        scatter_plot(remeasured, "latency_ms", "p50 latency, re-measured side by side (ms)"),
        "<h2>Accuracy drop against size (every measured trial)</h2>",
        scatter_plot(everyone, "size_bytes", "artifact size", log_x=True),
        '<p class="note">Red: the sweep\'s Pareto front (drop, re-measured latency and size together); blue: '
        "candidates that fell off it; grey: the rest. The dashed line joins each plot's two-axis front.</p>",
        f"<h2>The front, rebuilt by</h2><ul>{front or '<li>no trial met the constraints</li>'}</ul>",
        "</body></html>\n",
    ])
