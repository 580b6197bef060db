"""DistillStage: fine-tune a student (the pruned model, or a smaller architecture) against the original model.

The loss is the KL divergence between temperature-softened outputs (scaled by T², as in Hinton et al.), plus
cross-entropy on hard labels when labels are given, plus an optional feature loss (MSE between named layers'
outputs, through a learned 1x1 projection when the student is narrower). The class outputs are softened (see
``prune.ClassOutputs``: the one the labels fit, Softmax outputs through their logarithm, else the first with
class scores on axis 1); other outputs, such as a detector's box and landmark regressions, are matched with MSE.
The hard-label loss and the held-out accuracy use the output the labels fit, not necessarily the first.

A held-out split of the training data (``val_fraction``) decides: after every epoch the student's top-1
agreement with the teacher on it is measured; the best student is kept (the one before training counts),
and training stops after ``patience`` epochs without improvement. The learning rate follows a cosine
schedule. Everything random comes from ``seed``: the split, the shuffling, the projections.

Distillation is the expensive stage, so it is cached: its key holds the teacher's and student's keys, the
training data's fingerprint and every option here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import BuildContext, track
from edgec.compiler.errors import ConfigError, TargetUnavailableError
from edgec.compiler.modelio import flatten_outputs, import_callable
from edgec.compiler.stage import Stage
from edgec.compiler.stages.prune import (
    MODEL_FILE,
    ClassOutputs,
    PrunedModel,
    _torch,
    class_outputs,
    count_macs_params,
    example_args,
    is_plain_module,
    rebuild_pruned,
    save_torch_model,
    stacked_inputs,
    tracking_modules,
    trainable_module,
)
from edgec.compiler.types import CalibrationSet, InputSpec, LoadedModel

WEIGHTS_FILE = "weights.pt"
TENSORBOARD_DIR = "tensorboard"


@dataclasses.dataclass
class DistilledModel(LoadedModel):
    """The distilled student: ``module`` is the trained nn.Module on a fresh run, ``exported.module()`` when
    restored from the cache."""

    figures: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """Every option of distillation; each one changes the result, so all are part of the cache key."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    hard_label_weight: float | None = None  # None: 0.5 when labels are given, else 0
    feature_layers: tuple[str, ...] = ()
    feature_weight: float = 1.0
    val_fraction: float = 0.15
    patience: int = 3
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, not {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, not {self.lr}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (BatchNorm trains on batches), not {self.batch_size}")
        if not self.temperature > 0:
            raise ConfigError(f"--distill-temperature must be positive, not {self.temperature}")
        if self.hard_label_weight is not None and not 0.0 <= self.hard_label_weight <= 1.0:
            raise ConfigError(f"--hard-label-weight must be between 0 and 1, not {self.hard_label_weight}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), not {self.val_fraction}")
        if self.patience < 1:
            raise ConfigError(f"patience must be at least 1 epoch, not {self.patience}")
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight must be 0 or more, not {self.feature_weight}")


def source_fingerprint(factory: str) -> str | None:
    """A hash of the file that defines ``module:function`` (found without importing it), or None."""
    mod_name = factory.rpartition(":")[0]
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            origin = mod_name
        else:
            spec = importlib.util.find_spec(mod_name)
            origin = spec.origin if spec is not None else None
        if not origin or not Path(origin).is_file():
            return None
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest()
    except (ImportError, ValueError, OSError):
        return None


def build_student(factory: str) -> Any:
    torch = _torch()
    built = import_callable(factory, "--student")()
    if isinstance(built, tuple) and built:
        built = built[0]
    if not isinstance(built, torch.nn.Module):
        raise ConfigError(f"--student {factory} returned {type(built).__name__}, not a torch.nn.Module")
    return built


@dataclasses.dataclass
class _TrainingSet:
    """The training data as tensors, the teacher's outputs on it, and its held-out split."""

    xs: list[Any]
    y: Any  # the labels as a tensor when the hard-label loss uses them, else None
    t_outs: list[Any]
    classes: ClassOutputs
    train_idx: Any
    n_val: int
    val_x: list[Any]
    val_t: list[Any]
    val_y: Any  # the held-out labels, when labels are given
    w_hard: float  # the hard-label loss's weight (0 without labels for it)


class DistillStage(Stage):
    """Train ``student`` (the value named by ``student_source``, or the one ``student`` builds) to match the teacher."""

    name = "distill"
    writes = "distilled_model"
    tools = ("torch",)

    def __init__(
        self,
        options: DistillOptions = DistillOptions(),
        student_source: str | None = "pruned_model",
        student: str | None = None,
        model_factory: str | None = None,
        tensorboard: bool = False,
        has_labels: bool = False,
    ):
        if (student_source is None) == (student is None):
            raise ConfigError("distillation needs exactly one student: a pruned model or --student module:function")
        options.check()
        if options.hard_label_weight and not has_labels:
            raise ConfigError(
                f"the hard-label loss (weight {options.hard_label_weight}) needs labels, and none were given",
                hint="pass --train-labels with one class per training sample, or --hard-label-weight 0",
            )
        self.opts = options
        self.student_source = student_source
        self.student = student
        self.model_factory = model_factory
        self.tensorboard = tensorboard
        self.has_labels = has_labels
        self.reads = ("model", student_source, "train_data") if student_source else ("model", "train_data")

    def options(self) -> dict[str, Any]:
        opts = dataclasses.asdict(self.opts)
        opts["feature_layers"] = list(self.opts.feature_layers)
        opts["hard_label_weight"] = self.hard_weight
        opts["student"] = self.student
        if self.student:
            opts["student_source_sha256"] = source_fingerprint(self.student)
        opts["model_factory"] = self.model_factory
        opts["tensorboard"] = self.tensorboard
        return opts

    @property
    def hard_weight(self) -> float:
        if self.opts.hard_label_weight is not None:
            return self.opts.hard_label_weight
        return 0.5 if self.has_labels else 0.0

    def requires(self, inputs: dict[str, Any], ctx: BuildContext) -> None:
        data = inputs.get("train_data")
        if data is None:
            raise ConfigError("distillation needs training data", hint="pass --train-data")
        if len(data) < 4:
            raise ConfigError(
                f"distillation needs at least 4 training samples ({len(data)} given): some are held out to "
                "choose the best student", hint="pass more --train-data",
            )
        if self.hard_weight and getattr(data, "labels", None) is None:
            raise ConfigError(
                f"the hard-label loss (weight {self.hard_weight}) needs labels, and none were given",
                hint="pass --train-labels, or --hard-label-weight 0",
            )

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> DistilledModel:
        torch = _torch()
        loaded: LoadedModel = inputs["model"]
        spec = loaded.spec
        opts = self.opts
        torch.manual_seed(opts.seed)

        if loaded.kind != "torch":
            raise ConfigError(
                f"distillation needs a PyTorch teacher, but '{loaded.source}' is an ONNX file",
                hint="build from the PyTorch checkpoint",
            )
        teacher = self._teacher(loaded)
        student, student_name = self._student(inputs, teacher)
        self._check_shapes(teacher, student, spec, student_name)
        data = self._training_set(teacher, inputs["train_data"], spec)

        features = _Features(teacher, student, opts.feature_layers, data.xs, spec) if opts.feature_layers else None
        params = list(student.parameters()) + (features.parameters() if features else [])
        optimizer = torch.optim.Adam(params, lr=opts.lr)
        steps_per_epoch = max(1, len(data.train_idx) // opts.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.epochs * steps_per_epoch)
        writer = self._writer(out_dir)
        gen = torch.Generator().manual_seed(opts.seed)

        start = self._score(student, data, spec)
        ctx.report(
            f"[distill] {len(data.train_idx)} training / {data.n_val} held-out samples; held-out agreement with the "
            f"teacher before: {start[0]:.2f}%"
        )
        best, history, epoch_seconds = self._epochs(student, features, data, spec, optimizer, scheduler, writer, gen,
                                                    start[0], ctx)
        if writer is not None:
            writer.close()
        if features is not None:
            features.close()

        student.load_state_dict(best[2])
        student.eval()
        final = self._score(student, data, spec)
        figures = self._figures(teacher, student, spec, student_name, data, start, final, best[1], history,
                                epoch_seconds)
        ctx.report(
            f"[distill] kept epoch {best[1]}: held-out agreement {start[0]:.2f}% -> {final[0]:.2f}%, "
            f"{figures['seconds_per_epoch']:.2f}s per epoch"
        )
        torch.save(student.state_dict(), str(out_dir / WEIGHTS_FILE))
        ep = save_torch_model(student, spec, out_dir, "distilled")
        return DistilledModel("torch", spec, loaded.source, "distilled", module=student, exported=ep, figures=figures)

    def _student(self, inputs: dict[str, Any], teacher: Any) -> tuple[Any, str]:
        """The student to train (the pruned model rebuilt, or the one --student builds) and its name in messages."""
        if self.student_source:
            pruned: PrunedModel = inputs[self.student_source]
            return rebuild_pruned(teacher if is_plain_module(teacher) else None, pruned), "the pruned model"
        return build_student(self.student), f"--student {self.student}"

    def _training_set(self, teacher: Any, data: CalibrationSet, spec: InputSpec) -> _TrainingSet:
        """The training data as tensors with the teacher's outputs on it, split into training and held-out parts."""
        torch = _torch()
        arrays = stacked_inputs(data, spec)
        xs = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in spec.input_names]
        count = len(xs[0])
        labels = getattr(data, "labels", None)
        y = torch.from_numpy(np.asarray(labels)).long() if labels is not None and self.hard_weight else None
        t_outs = self._infer(teacher, xs, spec)
        classes = class_outputs(t_outs, labels)
        if y is not None and classes.labelled is None:
            raise ConfigError(
                f"the hard-label loss needs an output with class scores on axis 1 for the labels (classes "
                f"{int(y.min())}..{int(y.max())}), but the outputs have shapes {[list(t.shape) for t in t_outs]}",
                hint="pass --hard-label-weight 0",
            )

        rng = np.random.default_rng(self.opts.seed)
        perm = rng.permutation(count)
        n_val = min(count - 2, max(2, int(round(self.opts.val_fraction * count))))
        val_idx = torch.from_numpy(np.sort(perm[:n_val]))
        train_idx = torch.from_numpy(np.sort(perm[n_val:]))
        return _TrainingSet(
            xs=xs, y=y, t_outs=t_outs, classes=classes, train_idx=train_idx, n_val=n_val,
            val_x=[x[val_idx] for x in xs], val_t=[t[val_idx] for t in t_outs],
            val_y=torch.from_numpy(np.asarray(labels)).long()[val_idx] if labels is not None else None,
            w_hard=self.hard_weight if y is not None else 0.0,
        )

    def _score(self, model: Any, data: _TrainingSet, spec: InputSpec) -> tuple[float, float | None]:
        """Held-out top-1 agreement with the teacher (or minus the MSE without class outputs), and accuracy."""
        F = _torch().nn.functional
        outs = self._infer(model, data.val_x, spec, trainable=True)
        classes = data.classes
        k = classes.main
        if k is not None:
            agree = float((outs[k].argmax(1) == data.val_t[k].argmax(1)).float().mean() * 100)
        else:
            agree = -float(F.mse_loss(outs[0], data.val_t[0]))
        acc = None
        if data.val_y is not None and classes.labelled is not None:
            acc = float((outs[classes.labelled].argmax(1) == data.val_y).float().mean() * 100)
        return agree, acc

    def _epochs(self, student: Any, features: _Features | None, data: _TrainingSet, spec: InputSpec,
                optimizer: Any, scheduler: Any, writer: Any, gen: Any, start_agree: float, ctx: BuildContext
                ) -> tuple[tuple[float, int, dict[str, Any]], list[dict[str, Any]], list[float]]:
        """Train until ``patience`` epochs bring no better agreement: the best (agreement, epoch, weights), each
        epoch's figures and seconds."""
        opts = self.opts
        best = (start_agree, 0, {k: v.detach().clone() for k, v in student.state_dict().items()})
        history: list[dict[str, Any]] = []
        epoch_seconds: list[float] = []
        stale = 0
        for epoch in range(1, opts.epochs + 1):
            t0 = time.perf_counter()
            mean_loss = self._train_epoch(student, features, data, optimizer, scheduler, gen, epoch, ctx)
            student.eval()
            agree, acc = self._score(student, data, spec)
            seconds = time.perf_counter() - t0
            epoch_seconds.append(seconds)
            improved = agree > best[0]
            if improved:
                best = (agree, epoch, {k: v.detach().clone() for k, v in student.state_dict().items()})
                stale = 0
            else:
                stale += 1
            history.append({"epoch": epoch, "loss": round(mean_loss, 5), "agreement": round(agree, 3),
                            "accuracy": None if acc is None else round(acc, 3), "seconds": round(seconds, 3)})
            self._log_epoch(ctx, writer, epoch, mean_loss, agree, acc, optimizer.param_groups[0]["lr"], seconds,
                            improved)
            if stale >= opts.patience:
                ctx.report(f"[distill] stopping early: no better agreement for {opts.patience} epochs")
                break
        return best, history, epoch_seconds

    def _train_epoch(self, student: Any, features: _Features | None, data: _TrainingSet, optimizer: Any,
                     scheduler: Any, gen: Any, epoch: int, ctx: BuildContext) -> float:
        """One pass over the training part in shuffled batches; the mean loss."""
        torch = _torch()
        opts = self.opts
        student.train()
        order = data.train_idx[torch.randperm(len(data.train_idx), generator=gen)]
        total = 0.0
        batches = 0
        steps = range(0, len(order), opts.batch_size)
        for i in track(ctx.report, f"[distill] epoch {epoch}/{opts.epochs}", steps):
            idx = order[i:i + opts.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on one sample
            loss = self._loss(student, features, data, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            batches += 1
        return total / max(1, batches)

    def _loss(self, student: Any, features: _Features | None, data: _TrainingSet, idx: Any) -> Any:
        """The batch's loss: softened KL (class outputs) or MSE (others), hard-label cross-entropy, feature MSE."""
        F = _torch().nn.functional
        T = self.opts.temperature
        w_hard = data.w_hard
        classes = data.classes
        batch = [x[idx] for x in data.xs]
        s_outs = flatten_outputs(student(*batch)) if features is None else features.student_run(batch)
        loss = 0.0
        for k, (s, t) in enumerate(zip(s_outs, data.t_outs)):
            t = t[idx]
            if k in classes:
                s, t = classes.logits(k, s), classes.logits(k, t)
                soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="none",
                                log_target=True).sum(1).mean() * (T * T)
            else:
                soft = F.mse_loss(s, t)
            loss = loss + (1.0 - w_hard) * soft
        if w_hard:
            k = classes.labelled
            loss = loss + w_hard * F.cross_entropy(classes.logits(k, s_outs[k]), data.y[idx])
        if features is not None:
            loss = loss + self.opts.feature_weight * features.loss(batch)
        return loss

    def _log_epoch(self, ctx: BuildContext, writer: Any, epoch: int, mean_loss: float, agree: float,
                   acc: float | None, lr: float, seconds: float, improved: bool) -> None:
        """Report an epoch's figures, and write them to TensorBoard when asked."""
        ctx.report(
            f"[distill] epoch {epoch}/{self.opts.epochs}: loss {mean_loss:.4f}, held-out agreement {agree:.2f}%"
            + (f", accuracy {acc:.2f}%" if acc is not None else "")
            + f", lr {lr:.2e}, {seconds:.1f}s" + (" (best)" if improved else "")
        )
        if writer is not None:
            writer.add_scalar("train/loss", mean_loss, epoch)
            writer.add_scalar("held_out/agreement", agree, epoch)
            if acc is not None:
                writer.add_scalar("held_out/accuracy", acc, epoch)
            writer.add_scalar("train/lr", lr, epoch)

    def _figures(self, teacher: Any, student: Any, spec: InputSpec, student_name: str, data: _TrainingSet,
                 start: tuple[float, float | None], final: tuple[float, float | None], best_epoch: int,
                 history: list[dict[str, Any]], epoch_seconds: list[float]) -> dict[str, Any]:
        """The figures the manifest records: sizes of both models, agreement and accuracy before and after."""
        args = example_args(spec)
        t_macs, t_params = count_macs_params(teacher, args)
        s_macs, s_params = count_macs_params(student, args)
        return {
            "student": student_name,
            "teacher_params": t_params,
            "teacher_macs": t_macs,
            "student_params": s_params,
            "student_macs": s_macs,
            "train_samples": int(len(data.train_idx)),
            "held_out_samples": int(data.n_val),
            "hard_label_weight": data.w_hard,
            "agreement_before": round(start[0], 3),
            "agreement_after": round(final[0], 3),
            "accuracy_before": None if start[1] is None else round(start[1], 3),
            "accuracy_after": None if final[1] is None else round(final[1], 3),
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "seconds_per_epoch": round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else 0.0,
            "history": history,
        }

    def _teacher(self, loaded: LoadedModel) -> Any:
        """A module to run the teacher with: a trainable copy when one can be had (needed for feature hooks
        and for rebuilding a pruned student), else the loaded module as is."""
        if loaded.exported is None and is_plain_module(loaded.module):
            return trainable_module(loaded, None, "distillation").eval()
        if self.model_factory:
            return trainable_module(loaded, self.model_factory, "distillation").eval()
        if self.student_source or self.opts.feature_layers:
            trainable_module(loaded, None, "distilling a pruned student" if self.student_source else "a feature loss")
        return loaded.module

    def _infer(self, model: Any, xs: list[Any], spec: InputSpec, trainable: bool = False) -> list[Any]:
        """Outputs over all of ``xs``; in chunks of the exported batch size for a traced module."""
        torch = _torch()
        batch = 256
        if not trainable and not is_plain_module(model):
            first = spec.inputs[0].shape[0] if spec.inputs and spec.inputs[0].shape else 1
            batch = first if isinstance(first, int) else 256
        parts: list[list[Any]] = []
        with torch.no_grad():
            for i in range(0, len(xs[0]), batch):
                parts.append([o.detach() for o in flatten_outputs(model(*[x[i:i + batch] for x in xs]))])
        return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _check_shapes(self, teacher: Any, student: Any, spec: InputSpec, name: str) -> None:
        torch = _torch()
        args = example_args(spec)
        student.eval()
        with tracking_modules(student) as stack, torch.no_grad():
            try:
                s_outs = flatten_outputs(student(*args))
            except Exception as exc:
                where = f" in module '{stack[-1]}'" if stack else ""
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"{name} fails on the teacher's inputs ({', '.join(t.name + ':' + t.shape_str() for t in spec.inputs)})"
                    f"{where}: {first}",
                    hint="the student must take the same inputs as the teacher",
                ) from None
        with torch.no_grad():
            t_outs = flatten_outputs(teacher(*args))
        s_shapes = [list(o.shape) for o in s_outs]
        t_shapes = [list(o.shape) for o in t_outs]
        if s_shapes != t_shapes:
            raise ConfigError(
                f"the outputs of {name} have shapes {s_shapes}, the teacher's have {t_shapes}",
                hint="the student must produce outputs of the teacher's shapes (same classes, same order)",
            )

    def _writer(self, out_dir: Path) -> Any:
        if not self.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TargetUnavailableError(
                "TensorBoard logs (--tensorboard) need the Python package 'tensorboard', which is not installed",
                hint="pip install tensorboard, or build without --tensorboard",
            ) from None
        return SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR))

    def save(self, value: DistilledModel, out_dir: Path) -> dict[str, Any]:
        return {"source": str(value.source), "spec": value.spec.to_dict(), "figures": value.figures,
                "files": {"model": MODEL_FILE, "weights": WEIGHTS_FILE}}

    def restore(self, result: dict[str, Any], files: Path) -> DistilledModel:
        torch = _torch()
        ep = torch.export.load(str(files / result["files"]["model"]))
        return DistilledModel("torch", InputSpec.from_dict(result["spec"]), Path(result["source"]), "distilled",
                              module=ep.module(), exported=ep, figures=result["figures"])

    def summary(self, value: DistilledModel) -> dict[str, Any]:
        return value.figures


class _Features:
    """Feature loss: MSE between named layers' outputs, through a 1x1 projection on axis 1 when the student's
    layer is narrower than the teacher's (as after pruning)."""

    def __init__(self, teacher: Any, student: Any, names: tuple[str, ...], xs: list[Any], spec: InputSpec):
        torch = _torch()
        self.teacher, self.student, self.names = teacher, student, list(names)
        t_modules, s_modules = dict(teacher.named_modules()), dict(student.named_modules())
        for n in self.names:
            if n not in t_modules or n not in s_modules:
                where = "teacher" if n not in t_modules else "student"
                raise ConfigError(
                    f"--feature-layer '{n}' is not a module of the {where}",
                    hint="name a module present in both, e.g. the output of a residual stage",
                )
        self._t: dict[str, Any] = {}
        self._s: dict[str, Any] = {}
        self._hooks = [t_modules[n].register_forward_hook(self._grab(self._t, n)) for n in self.names]
        self._hooks += [s_modules[n].register_forward_hook(self._grab(self._s, n)) for n in self.names]
        probe = [x[:2] for x in xs]
        with torch.no_grad():
            teacher(*probe)
            student.eval()
            student(*probe)
        self.proj = {}
        for n in self.names:
            t_c, s_c = self._t[n].shape[1], self._s[n].shape[1]
            self.proj[n] = torch.nn.Linear(s_c, t_c, bias=False) if t_c != s_c else None

    @staticmethod
    def _grab(store: dict[str, Any], name: str) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            store[name] = flatten_outputs(out)[0]
        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def parameters(self) -> list[Any]:
        return [p for m in self.proj.values() if m is not None for p in m.parameters()]

    def student_run(self, batch: list[Any]) -> list[Any]:
        return flatten_outputs(self.student(*batch))

    def loss(self, batch: list[Any]) -> Any:
        torch = _torch()
        with torch.no_grad():
            self.teacher(*batch)
        total = 0.0
        for n in self.names:
            s, t = self._s[n], self._t[n].detach()
            if self.proj[n] is not None:
                s = self.proj[n](s.movedim(1, -1)).movedim(-1, 1)
            total = total + torch.nn.functional.mse_loss(s, t)
        return total / len(self.names)


__all__ = ["DistillStage", "DistillOptions", "DistilledModel", "build_student", "source_fingerprint"]
