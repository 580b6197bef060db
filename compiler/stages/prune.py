"""PruneStage: structured (channel) pruning of a torch model with torch-pruning's DepGraph.

torch-pruning traces the model once and groups the layers whose channels must go together (a convolution,
its BatchNorm, the inputs of the layers after it, every branch of a residual sum); edgec does not track
dependencies itself. It picks the importance criterion, keeps the output layers and the protected layers
intact, prunes to a fraction of channels or iterates until a MAC budget is met, and records params and
MACs before and after. A structure torch-pruning cannot prune is left alone with a line in the report; a
model it cannot trace, or one that no longer runs after pruning, is refused with an error naming the module.

The pruned model is kept three ways in the stage's folder: an ExportedProgram (``model.pt2``, exact, what
export and every target consume), its weights (``weights.pt``) and the layer attributes pruning changed
(``architecture.json``). The last two rebuild a trainable nn.Module from the original one for distillation,
since an ExportedProgram's module cannot be trained in train mode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgec.compiler.context import BuildContext
from edgec.compiler.errors import ConfigError, ExportError, PruneError, missing_dependency
from edgec.compiler.modelio import flatten_outputs
from edgec.compiler.stage import Stage
from edgec.compiler.types import CalibrationSet, InputSpec, LoadedModel

CRITERIA = ("l1", "l2", "taylor")
MODEL_FILE = "model.pt2"
WEIGHTS_FILE = "weights.pt"
ARCH_FILE = "architecture.json"
# --prune-macs raises the channel ratio in steps of MAX_RATIO / MAC_STEPS (1% of each layer's channels)
# until the MAC budget is met; no layer loses more than MAX_RATIO of its channels.
MAX_RATIO = 0.9
MAC_STEPS = 90
TAYLOR_SAMPLES = 128
BATCH = 64


@dataclasses.dataclass
class PrunedModel(LoadedModel):
    """A pruned torch model: ``module`` is the pruned nn.Module when ``trainable``, else ``exported.module()``."""

    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights_path: Path | None = None
    arch_path: Path | None = None
    trainable: bool = False


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise missing_dependency("torch", "torch", "pruning and distillation") from None
    return torch


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise missing_dependency("torch-pruning", "prune", "structured pruning (--prune, --prune-macs)") from None
    return torch_pruning


def is_plain_module(module: Any) -> bool:
    """True for an nn.Module built from Python code, which can be trained and pruned; False for the module
    of an ExportedProgram or a TorchScript module."""
    torch = _torch()
    if isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return False
    return isinstance(module, torch.nn.Module) and not isinstance(module, torch.fx.GraphModule)


def trainable_module(loaded: LoadedModel, model_factory: str | None, purpose: str) -> Any:
    """A fresh nn.Module (a copy: the input is never changed) of ``loaded`` that can be trained and pruned.

    An ExportedProgram or a TorchScript module holds a traced graph, not the layers torch-pruning and
    training work on: their weights are loaded into the module that ``model_factory`` builds.
    """
    if loaded.kind != "torch":
        raise ConfigError(
            f"{purpose} needs a PyTorch model, but '{loaded.source}' is an ONNX file",
            hint="build from the PyTorch checkpoint (state_dict with --model-factory, or .pt2 with --model-factory)",
        )
    if loaded.exported is None and is_plain_module(loaded.module):
        return copy.deepcopy(loaded.module)
    what = "an ExportedProgram (.pt2)" if loaded.exported is not None else "a TorchScript module"
    if not model_factory:
        raise ConfigError(
            f"{purpose} needs the model's Python code, but '{loaded.source}' is {what}: a traced graph whose "
            "layers cannot be pruned or trained",
            hint="pass --model-factory module:function (building the same architecture: edgec loads the "
            "checkpoint's weights into it), or build from a state_dict checkpoint",
        )
    from edgec.compiler.stages.load import _from_factory

    state = loaded.exported.state_dict if loaded.exported is not None else loaded.module.state_dict()
    module, _ = _from_factory(loaded.source, dict(state), model_factory)
    return module.eval()


def example_args(spec: InputSpec, seed: int = 0) -> tuple:
    torch = _torch()
    return tuple(torch.from_numpy(v) for v in spec.example_feeds(seed=seed).values())


def count_macs_params(module: Any, args: tuple) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass (convolutions and matrix products) and parameter count."""
    torch = _torch()
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    params = sum(p.numel() for p in module.parameters())
    return int(counter.get_total_flops() // 2), int(params)


@contextlib.contextmanager
def tracking_modules(module: Any) -> Iterator[list[str]]:
    """Yields the stack of modules being run: after an exception, its last entry is the innermost one that failed."""
    stack: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        if not name:
            continue

        def pre(mod: Any, args: Any, name: str = name) -> None:
            stack.append(name)

        def post(mod: Any, args: Any, out: Any, name: str = name) -> None:
            if stack and stack[-1] == name:
                stack.pop()

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _where(module: Any, stack: list[str]) -> str:
    if not stack:
        return "the model's own forward()"
    name = stack[-1]
    return f"module '{name}' ({type(module.get_submodule(name)).__name__})"


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _prunable_types() -> tuple[type, ...]:
    torch = _torch()
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.Linear, nn.MultiheadAttention, nn.LSTM)


def output_layers(module: Any, args: tuple) -> list[str]:
    """The prunable layers that produce the model's outputs; pruning their output channels would change the
    output shapes. Found by a forward pass: a layer whose output shares storage with a model output (the
    output itself, or a view such as flatten); failing that, the last prunable layer to run."""
    torch = _torch()
    types = _prunable_types()
    produced: list[tuple[str, set[int]]] = []
    handles = []
    for name, sub in module.named_modules():
        if name and isinstance(sub, types):
            def hook(mod: Any, a: Any, out: Any, name: str = name) -> None:
                ptrs = {t.untyped_storage().data_ptr() for t in flatten_outputs(out) if isinstance(t, torch.Tensor)}
                produced.append((name, ptrs))

            handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            outs = module(*args)
    finally:
        for h in handles:
            h.remove()
    wanted = {t.untyped_storage().data_ptr() for t in flatten_outputs(outs) if isinstance(t, torch.Tensor)}
    found = list(dict.fromkeys(name for name, ptrs in produced if ptrs & wanted))
    if not found and produced:
        found = [produced[-1][0]]
    return found


def _attributes(module: Any) -> dict[str, dict[str, Any]]:
    """The plain attributes (channel counts, shapes) of every submodule: what pruning rewrites besides weights."""
    simple = (int, float, bool, str, type(None))
    snap: dict[str, dict[str, Any]] = {}
    for name, sub in module.named_modules():
        attrs = {}
        for key, value in vars(sub).items():
            if key.startswith("_"):
                continue
            if isinstance(value, simple) or (
                isinstance(value, (tuple, list)) and all(isinstance(v, simple) for v in value)
            ):
                attrs[key] = list(value) if isinstance(value, tuple) else value
        snap[name] = attrs
    return snap


def rebuild_pruned(original: Any, pruned: PrunedModel) -> Any:
    """The trainable nn.Module of ``pruned``, rebuilt from a copy of the unpruned ``original``."""
    torch = _torch()
    if pruned.trainable:
        return copy.deepcopy(pruned.module)
    if pruned.arch_path is None or pruned.weights_path is None:
        raise ValueError("pruned model has no architecture to rebuild from")
    model = copy.deepcopy(original)
    modules = dict(model.named_modules())
    for name, attrs in json.loads(pruned.arch_path.read_text()).items():
        sub = modules[name]
        for key, value in attrs.items():
            old = getattr(sub, key, None)
            setattr(sub, key, tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value)
    state = torch.load(str(pruned.weights_path), map_location="cpu", weights_only=True)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        sub = modules[owner]
        param = sub._parameters.get(leaf)
        if param is not None and param.shape != tensor.shape:
            sub._parameters[leaf] = torch.nn.Parameter(torch.empty_like(tensor), requires_grad=param.requires_grad)
        buf = sub._buffers.get(leaf)
        if buf is not None and buf.shape != tensor.shape:
            sub._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_torch_model(module: Any, spec: InputSpec, out_dir: Path, what: str) -> Any:
    """Export ``module`` as an ExportedProgram to ``out_dir/model.pt2`` (dynamic axes kept); returns it."""
    torch = _torch()
    args = example_args(spec)
    dims = []
    for t in spec.inputs:
        dyn = {i: torch.export.Dim.AUTO for i, d in enumerate(t.shape) if not isinstance(d, int)}
        dims.append(dyn or None)
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if any(dims):
                ep = torch.export.export(module, args, dynamic_shapes=tuple(dims))
            else:
                ep = torch.export.export(module, args)
    except Exception as exc:
        raise ExportError(
            f"torch.export cannot trace the {what} model: {_reason(exc)}",
            hint="the error names the construct torch.export rejects; rewrite it in the model",
        ) from None
    torch.export.save(ep, str(out_dir / MODEL_FILE))
    return ep


def first_logits(out: Any) -> Any:
    return flatten_outputs(out)[0]


def is_logits(t: Any) -> bool:
    """Class scores on axis 1, as torch.nn.CrossEntropyLoss reads them: (N, C) or (N, C, d1, ...)."""
    return t.dim() >= 2 and t.shape[1] > 1 and t.is_floating_point()


class PruneStage(Stage):
    """Remove a fraction of channels (``ratio``) or of MACs (``macs``) from the model's prunable layers."""

    name = "prune"
    writes = "pruned_model"
    tools = ("torch", "torch-pruning")

    def __init__(
        self,
        ratio: float | None = None,
        macs: float | None = None,
        criterion: str = "l1",
        global_pruning: bool = False,
        protect: tuple[str, ...] = (),
        round_to: int | None = None,
        model_factory: str | None = None,
        seed: int = 0,
    ):
        if (ratio is None) == (macs is None):
            raise ConfigError("give exactly one of --prune RATIO and --prune-macs FRACTION")
        for option, value in (("--prune", ratio), ("--prune-macs", macs)):
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(
                    f"{option} {value}: the fraction to remove must be between 0 and 1 (exclusive)",
                    hint=f"e.g. {option} 0.5",
                )
        if criterion not in CRITERIA:
            raise ConfigError(f"unknown pruning criterion '{criterion}'", hint=f"use one of: {', '.join(CRITERIA)}")
        if round_to is not None and round_to < 1:
            raise ConfigError(f"--prune-round-to must be a positive channel count, not {round_to}")
        self.ratio = ratio
        self.macs = macs
        self.criterion = criterion
        self.global_pruning = global_pruning
        self.protect = tuple(protect)
        self.round_to = round_to
        self.model_factory = model_factory
        self.seed = seed
        self.reads = ("model", "train_data") if criterion == "taylor" else ("model",)

    def options(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "macs": self.macs,
            "criterion": self.criterion,
            "global": self.global_pruning,
            "protect": list(self.protect),
            "round_to": self.round_to,
            "model_factory": self.model_factory,
            "seed": self.seed,
        }

    def requires(self, inputs: dict[str, Any], ctx: BuildContext) -> None:
        if self.criterion == "taylor":
            data = inputs.get("train_data")
            if data is None or len(data) == 0:
                raise ConfigError("the taylor criterion needs data", hint="pass --train-data, or --prune-criterion l1")

    def run(self, inputs: dict[str, Any], out_dir: Path, ctx: BuildContext) -> PrunedModel:
        torch = _torch()
        tp = _torch_pruning()
        loaded: LoadedModel = inputs["model"]
        module = trainable_module(loaded, self.model_factory, "pruning").eval()
        args = example_args(loaded.spec)
        macs_before, params_before = count_macs_params(module, args)
        names = {sub: name for name, sub in module.named_modules()}
        types = _prunable_types()
        channels_before = {name: _out_channels(sub) for name, sub in module.named_modules() if isinstance(sub, types)}
        attrs_before = _attributes(module)

        heads = output_layers(module, args)
        protected = list(heads)
        for pattern in self.protect:
            hits = [n for n in names.values() if n and fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                some = ", ".join(n for n in list(names.values())[1:9] if n)
                raise ConfigError(
                    f"--protect '{pattern}' matches no module of the model",
                    hint=f"patterns are fnmatch patterns on module names, e.g. 'stem.*'; some names: {some}",
                )
            protected.extend(h for h in hits if h not in protected)
        ignored = [module.get_submodule(n) for n in protected]

        importance = {
            "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
        }[self.criterion]()
        taylor = self._taylor_batches(inputs.get("train_data"), loaded, module) if self.criterion == "taylor" else None

        torch.manual_seed(self.seed)
        skipped: list[str] = []
        with warnings.catch_warnings(record=True) as caught, tracking_modules(module) as stack:
            warnings.simplefilter("always")
            try:
                pruner = tp.pruner.BasePruner(
                    module, args, importance,
                    global_pruning=self.global_pruning,
                    pruning_ratio=self.ratio if self.ratio is not None else MAX_RATIO,
                    max_pruning_ratio=MAX_RATIO,
                    iterative_steps=1 if self.ratio is not None else MAC_STEPS,
                    ignored_layers=ignored,
                    round_to=self.round_to,
                    # Without it torch-pruning retries a failed forward with the tuple as one argument,
                    # and reports that second, confusing failure.
                    forward_fn=lambda model, inputs: model(*inputs),
                )
            except Exception as exc:
                raise PruneError(
                    f"torch-pruning cannot trace {_where(module, stack)} of '{loaded.source}': {_reason(exc)}",
                    hint="this module runs something autograd cannot follow (numpy, .item(), in-place tricks); "
                    "rewrite it with torch ops, or build without --prune",
                ) from None
            stack.clear()
            groups = sum(1 for _ in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                             root_module_types=pruner.root_module_types))
            if groups == 0:
                raise ConfigError(
                    f"nothing to prune in '{loaded.source}': every prunable layer is protected or untraceable",
                    hint=f"protected: {', '.join(protected) or 'none'}; protect fewer layers",
                )
            steps = 0
            macs_now = macs_before
            target = macs_before * (1.0 - self.macs) if self.macs is not None else None
            try:
                while True:
                    if taylor is not None:
                        _taylor_gradients(module, taylor)
                    pruner.step()
                    steps += 1
                    macs_now, _ = count_macs_params(module, args)
                    if target is None or macs_now <= target or steps >= MAC_STEPS:
                        break
            except Exception as exc:
                where = f" in {_where(module, stack)}" if stack else ""
                raise PruneError(
                    f"torch-pruning failed while pruning '{loaded.source}'{where}: {_reason(exc)}",
                    hint="--protect the module named in the error (its channels are then kept), or prune less",
                ) from None
            module.zero_grad(set_to_none=True)
            for w in caught:
                if "torch_pruning" not in str(w.filename):
                    continue  # torch's own warnings say nothing about what was pruned
                line = str(w.message).strip().splitlines()[0]
                if "Unwrapped parameters" in line:
                    line = (f"parameters used outside a layer ({line.split(':', 1)[1].strip()[:200]}): pruned "
                            "along their last non-singleton axis")
                if line not in skipped:
                    skipped.append(line)
            traced = set(pruner.DG.module2node)

        if target is not None and macs_now > target:
            raise PruneError(
                f"--prune-macs {self.macs}: removed only {1 - macs_now / macs_before:.1%} of the MACs of "
                f"'{loaded.source}' with at most {MAX_RATIO:.0%} of each layer's channels",
                hint=f"protect fewer layers (protected: {', '.join(protected)}) or ask for less",
            )
        kept = {n for n in names.values() if any(n == p or n.startswith(p + ".") for p in protected)}
        for name, sub in module.named_modules():
            if isinstance(sub, types) and sub not in traced and name not in kept:
                skipped.append(f"{name} ({type(sub).__name__}): not reached when torch-pruning traced the model "
                               "(detached, computed without autograd, or unused): left unpruned")
            if isinstance(sub, torch.nn.MultiheadAttention) and name not in kept:
                skipped.append(f"{name} (MultiheadAttention): keeps its {sub.num_heads} heads; torch-pruning narrows "
                               "each head's width instead (removing whole heads needs separate q/k/v Linear layers)")
        self._check(module, loaded, args)

        macs_after, params_after = count_macs_params(module, args)
        removable = [n for n in channels_before if n not in kept and channels_before[n]]
        before = sum(channels_before[n] for n in removable)
        after = sum(_out_channels(module.get_submodule(n)) for n in removable)
        figures = {
            "criterion": self.criterion,
            "mode": "ratio" if self.ratio is not None else "macs",
            "requested": self.ratio if self.ratio is not None else self.macs,
            "global": self.global_pruning,
            "round_to": self.round_to,
            "steps": steps,
            "params_before": params_before,
            "params_after": params_after,
            "macs_before": macs_before,
            "macs_after": macs_after,
            "macs_removed": round(1 - macs_after / macs_before, 4) if macs_before else 0.0,
            "channels_removed": round(1 - after / before, 4) if before else 0.0,
            "channels": {n: [channels_before[n], _out_channels(module.get_submodule(n))] for n in channels_before},
            "protected": protected,
            "protected_outputs": heads,
            "skipped": skipped,
            "latency": "measured by `make bench` (bench.prune), not during the build",
        }
        ctx.report(
            f"[prune] {self.criterion}: MACs {macs_before:,} -> {macs_after:,} ({figures['macs_removed']:.1%} fewer), "
            f"params {params_before:,} -> {params_after:,}"
        )
        for line in skipped:
            ctx.report(f"[prune] skipped: {line}")

        changed = _attributes(module)
        arch = {n: {k: v for k, v in a.items() if attrs_before.get(n, {}).get(k) != v} for n, a in changed.items()}
        arch = {n: a for n, a in arch.items() if a}
        torch.save(module.state_dict(), str(out_dir / WEIGHTS_FILE))
        (out_dir / ARCH_FILE).write_text(json.dumps(arch, indent=1, sort_keys=True))
        ep = save_torch_model(module, loaded.spec, out_dir, "pruned")
        return PrunedModel(
            "torch", loaded.spec, loaded.source, "pruned", module=module, exported=ep, figures=figures,
            weights_path=out_dir / WEIGHTS_FILE, arch_path=out_dir / ARCH_FILE, trainable=True,
        )

    def _taylor_batches(self, data: CalibrationSet | None, loaded: LoadedModel, module: Any) -> list[tuple]:
        """Up to TAYLOR_SAMPLES samples with targets: the labels when given, else the unpruned model's classes."""
        torch = _torch()
        batches = stacked_inputs(data, loaded.spec)
        count = len(next(iter(batches.values())))
        take = np.sort(np.random.default_rng(self.seed).permutation(count)[:TAYLOR_SAMPLES])
        xs = [torch.from_numpy(np.ascontiguousarray(batches[n][take])) for n in loaded.spec.input_names]
        labels = getattr(data, "labels", None)
        with torch.no_grad():
            ref = first_logits(module(*xs))
        if labels is not None and is_logits(ref):
            target = torch.from_numpy(np.asarray(labels)[take]).long()
        elif is_logits(ref):
            target = ref.argmax(1)
        else:
            target = None
        out = []
        for i in range(0, len(take), BATCH):
            out.append((tuple(x[i:i + BATCH] for x in xs), None if target is None else target[i:i + BATCH]))
        return out

    def save(self, value: PrunedModel, out_dir: Path) -> dict[str, Any]:
        return {
            "source": str(value.source),
            "spec": value.spec.to_dict(),
            "figures": value.figures,
            "files": {"model": MODEL_FILE, "weights": WEIGHTS_FILE, "architecture": ARCH_FILE},
        }

    def restore(self, result: dict[str, Any], files: Path) -> PrunedModel:
        torch = _torch()
        ep = torch.export.load(str(files / result["files"]["model"]))
        return PrunedModel(
            "torch", InputSpec.from_dict(result["spec"]), Path(result["source"]), "pruned",
            module=ep.module(), exported=ep, figures=result["figures"],
            weights_path=files / result["files"]["weights"], arch_path=files / result["files"]["architecture"],
        )

    def summary(self, value: PrunedModel) -> dict[str, Any]:
        return value.figures

    @staticmethod
    def _check(module: Any, loaded: LoadedModel, args: tuple) -> None:
        """The pruned model must run and keep its output shapes."""
        torch = _torch()
        with tracking_modules(module) as stack:
            try:
                with torch.no_grad():
                    outs = flatten_outputs(module(*args))
            except Exception as exc:
                raise PruneError(
                    f"the pruned model of '{loaded.source}' fails in {_where(module, stack)}: {_reason(exc)}",
                    hint="torch-pruning could not trace how this module's channels depend on the layers before "
                    f"it; --protect '{stack[-1] if stack else '<module>'}' and the layers feeding it",
                ) from None
        for spec_out, out in zip(loaded.spec.outputs, outs):
            if isinstance(spec_out.shape, tuple) and tuple(out.shape) != spec_out.concrete_shape():
                raise PruneError(
                    f"pruning changed output '{spec_out.name}' of '{loaded.source}' from "
                    f"{spec_out.shape_str()} to {'x'.join(map(str, out.shape))}",
                    hint="--protect the layer that produces this output",
                )


def _out_channels(sub: Any) -> int:
    for attr in ("out_channels", "out_features", "embed_dim", "hidden_size"):
        value = getattr(sub, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _taylor_gradients(module: Any, batches: list[tuple]) -> None:
    """Accumulate gradients of the classification loss (or the output energy) for Taylor importance."""
    torch = _torch()
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for xs, target in batches:
            out = first_logits(module(*xs))
            if target is not None:
                loss = torch.nn.functional.cross_entropy(out, target)
            else:
                loss = out.float().pow(2).mean()
            loss.backward()


def stacked_inputs(data: CalibrationSet | None, spec: InputSpec) -> dict[str, np.ndarray]:
    """Every sample of ``data`` concatenated along the batch axis, per input."""
    if data is None:
        raise ConfigError("no training data", hint="pass --train-data")
    samples = list(data)
    return {n: np.concatenate([s[n] for s in samples]) for n in spec.input_names}


__all__ = [
    "PruneStage", "PrunedModel", "CRITERIA", "trainable_module", "rebuild_pruned",
    "count_macs_params", "save_torch_model", "example_args", "output_layers", "stacked_inputs",
]
