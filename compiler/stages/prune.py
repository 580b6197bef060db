"""PruneStage: structured (channel) pruning of a torch model with torch-pruning's DepGraph.

torch-pruning traces the model once and groups the layers whose channels must go together (a convolution,
its BatchNorm or PReLU, the inputs of the layers after it, every branch of a residual sum); edgec does not
track dependencies itself. It picks the importance criterion, keeps the output layers and the protected layers
intact, prunes to a fraction of channels or iterates until a MAC budget is met, and records params and
MACs before and after. A structure torch-pruning cannot prune is left alone with a line in the report; a
model it cannot trace, one it fails on, or one that no longer runs after pruning, is refused with an error
naming the module.

Two things edgec adds to torch-pruning's graph: the output layers are found on it by walking back from each
output through everything that is not a prunable layer (a head behind a Softmax or a flatten is an output
layer too), and a flatten that a permute made channels-last (NCHW -> NHWC before a Linear, as in MTCNN) gets
the index mapping that says which Linear columns each channel feeds: torch-pruning assumes channels first.

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
from typing import TYPE_CHECKING, Any

from edgec.compiler.context import BuildContext
from edgec.compiler.errors import ConfigError, ExportError, PruneError, missing_dependency
from edgec.compiler.modelio import flatten_outputs
from edgec.compiler.stage import Stage
from edgec.compiler.types import CalibrationSet, InputSpec, LoadedModel

if TYPE_CHECKING:
    import numpy as np

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


def trace_graph(module: Any, args: tuple) -> tuple[Any, list[Any]]:
    """torch-pruning's dependency graph of ``module`` and the outputs of the forward pass that traced it."""
    tp = _torch_pruning()
    outs: list[Any] = []

    def forward(model: Any, inputs: tuple) -> Any:
        out = model(*inputs)
        outs.extend(flatten_outputs(out))
        return out

    graph = tp.DependencyGraph().build_dependency(module, args, forward_fn=forward, verbose=False)
    return graph, outs


def output_layers(module: Any, graph: Any, outs: list[Any]) -> list[list[str]]:
    """Per model output, the prunable layers that produce it: pruning their output channels would change the
    output's shape. Found on torch-pruning's graph by walking back from the output through everything that is
    not itself a prunable layer (Softmax, activations, normalisation, pooling, reshape/permute/flatten, concat,
    sums), so a head behind a Softmax or a flatten is found as well as one that is the output itself."""
    types = _prunable_types()
    order = {sub: i for i, (_, sub) in enumerate(module.named_modules())}
    names = {sub: name for name, sub in module.named_modules()}
    by_grad_fn = {node.grad_fn: node for node in graph.module2node.values() if node.grad_fn is not None}
    found = []
    for out in outs:
        start = by_grad_fn.get(getattr(out, "grad_fn", None))
        stack, seen, layers = ([start] if start is not None else []), set(), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, types) and node.module in names:
                layers.add(node.module)
            else:
                stack.extend(node.inputs)
        found.append([names[m] for m in sorted(layers, key=order.__getitem__)])
    return found


# Ops that keep every element where it is relative to the channel axis, between a permute and a flatten.
_LAYOUT_KEEPING = ("Clone", "Relu", "LeakyRelu", "Elu", "Gelu", "Silu", "Sigmoid", "Tanh", "Hardswish",
                   "Hardsigmoid", "Hardtanh")


class _PermutedFlattenMapping:
    """torch-pruning's index mapping across ``x.permute(...).flatten(1)`` where the permute moves the channel
    axis away from axis 1 (MTCNN's NCHW -> NHWC before a Linear).

    torch-pruning treats the permute as element-wise and maps channel c to the flat block
    ``[c * HW, (c + 1) * HW)``, right only for a channels-first flatten: it removes the wrong Linear columns
    (or fails). With ``outer`` axes before the channel axis and ``inner`` after it, channel c is at
    ``o * C * inner + c * inner + i``. C shrinks as pruning goes on, so it is read from the graph on each call.
    """

    def __init__(self, outer: int, inner: int, channels: Any, reverse: bool):
        self.outer, self.inner, self.channels, self.reverse = outer, inner, channels, reverse

    def __call__(self, idxs: list) -> list:
        if not idxs:
            return []
        hybrid = type(idxs[0])  # torch-pruning's (index, root index) pair
        count = self.channels()
        if self.reverse:
            return list(dict.fromkeys(hybrid((i.idx // self.inner) % count, i.root_idx) for i in idxs))
        block = count * self.inner
        return [hybrid(o * block + i.idx * self.inner + k, i.root_idx)
                for i in idxs for o in range(self.outer) for k in range(self.inner)]


def map_permuted_flattens(graph: Any) -> None:
    """Give torch-pruning the right index mapping for every flatten that a permute/transpose moved the channel
    axis in front of (see _PermutedFlattenMapping)."""
    import numpy as np

    tp = _torch_pruning()
    from torch_pruning.dependency import shape_infer

    for node in list(graph.module2node.values()):
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        if node.type != tp.ops.OPTYPE.RESHAPE or len(node.inputs) != 1 or not sizes or len(sizes) < 3:
            continue
        sizes = [int(s) for s in sizes]
        rank = len(sizes)
        moves = []
        src = node.inputs[0]
        while src.type == tp.ops.OPTYPE.ELEMENTWISE and len(src.inputs) == 1 and src.grad_fn is not None:
            op = src.grad_fn.name()
            if op.startswith("PermuteBackward"):
                moves.append([int(d) % rank for d in src.grad_fn._saved_dims])
            elif op.startswith("TransposeBackward"):
                perm = list(range(rank))
                a, b = int(src.grad_fn._saved_dim0) % rank, int(src.grad_fn._saved_dim1) % rank
                perm[a], perm[b] = perm[b], perm[a]
                moves.append(perm)
            elif not op.startswith(_LAYOUT_KEEPING):
                break
            src = src.inputs[0]
        channel, batch = 1, 0
        for perm in reversed(moves):  # from the producer towards the flatten
            channel, batch = perm.index(channel), perm.index(batch)
        if channel == 1 or batch != 0:
            continue  # channels first: torch-pruning's own mapping is right
        flat = int(np.prod(sizes[1:]))
        consumers = [shape_infer.infer_in_channels_recursively(graph, n, [0]) for n in node.outputs]
        if flat not in consumers:
            continue  # not a flatten of every axis but the batch
        outer, inner = int(np.prod(sizes[1:channel])), int(np.prod(sizes[channel + 1:]))
        feeding = node.inputs[0]

        def channels(feeding: Any = feeding, node: Any = node, size: int = outer * inner) -> int:
            count = shape_infer.infer_out_channels_recursively(graph, feeding, [0])
            if count is None:
                count = max(shape_infer.infer_in_channels_recursively(graph, n, [0]) or 0 for n in node.outputs) // size
            return count

        for dep in node.dependencies:
            if dep.target is feeding:
                dep.index_mapping[0] = _PermutedFlattenMapping(outer, inner, channels, reverse=True)
        for dep in feeding.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _PermutedFlattenMapping(outer, inner, channels, reverse=False)
        # torch-pruning recomputes the mapping of every RESHAPE node before each group; as an element-wise
        # node this one keeps the mapping set here.
        node.type = tp.ops.OPTYPE.ELEMENTWISE


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


def is_logits(t: Any) -> bool:
    """Class scores on axis 1, as torch.nn.CrossEntropyLoss reads them: (N, C) or (N, C, d1, ...)."""
    return t.dim() >= 2 and t.shape[1] > 1 and t.is_floating_point()


def is_probabilities(t: Any) -> bool:
    """Scores that a Softmax over axis 1 made: non-negative, summing to 1 along axis 1."""
    torch = _torch()
    if not is_logits(t):
        return False
    t = t.detach().float()
    return bool(t.min() >= 0) and bool(torch.allclose(t.sum(1), torch.ones(()), atol=1e-3))


@dataclasses.dataclass(frozen=True)
class ClassOutputs:
    """Which outputs of a model hold class scores on axis 1, and in what form.

    ``labelled`` is the one the labels are for; ``main`` the one to measure agreement on (the labelled one,
    else the first Softmax output, else the first with scores on axis 1); ``probabilities`` those a Softmax
    made, whose logarithm stands in for the logits a loss wants. A detector's box and landmark regressions
    (N, 4) and (N, 10) look like scores but are none of these unless labelled.
    """

    main: int | None = None
    labelled: int | None = None
    probabilities: frozenset[int] = frozenset()

    def __contains__(self, k: int) -> bool:
        return k == self.main or k == self.labelled or k in self.probabilities

    def logits(self, k: int, t: Any) -> Any:
        """Output ``k`` as logits (up to a constant per sample): the log of a Softmax output."""
        return t.clamp_min(1e-12).log() if k in self.probabilities else t


def class_outputs(outs: list[Any], labels: Any = None) -> ClassOutputs:
    """Find the class outputs among the reference outputs ``outs`` (see ClassOutputs). With ``labels``, the
    labelled output is, among those whose shape fits them, a Softmax output before any other, then the one whose
    classes agree most with them."""
    import numpy as np

    torch = _torch()
    probabilities = frozenset(k for k, t in enumerate(outs) if is_probabilities(t))
    labelled = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long()
        best: tuple[bool, float] | None = None
        for k, t in enumerate(outs):
            fits = is_logits(t) and len(t) == len(y) and tuple(t.shape[2:]) == tuple(y.shape[1:])
            if fits and int(y.max()) < t.shape[1] and int(y.min()) >= 0:
                rank = (k in probabilities, float((t.argmax(1) == y).float().mean()))
                if best is None or rank > best:
                    labelled, best = k, rank
    if labelled is not None:
        main = labelled
    elif probabilities:
        main = min(probabilities)
    else:
        main = next((k for k, t in enumerate(outs) if is_logits(t)), None)
    return ClassOutputs(main, labelled, probabilities)


class _GroupWatch:
    """A torch-pruning importance criterion that also remembers what torch-pruning is working on (building a
    group, ranking it, pruning it), so that a failure inside torch-pruning names the layer at the group's root."""

    def __init__(self, criterion: Any, names: dict[Any, str]):
        self.criterion = criterion
        self.names = names
        self.current: Any = None  # a Group, or the module whose group is being built

    def __call__(self, group: Any, **kwargs: Any) -> Any:
        self.current = group
        return self.criterion(group, **kwargs)

    def watch(self, graph: Any) -> None:
        build = graph.get_pruning_group

        def get_pruning_group(module: Any, pruning_fn: Any, idxs: Any) -> Any:
            self.current = module
            return build(module, pruning_fn, idxs)

        graph.get_pruning_group = get_pruning_group

    def failed_on(self) -> tuple[str | None, list[str]]:
        """The name of the root layer of the group that failed, and of the other layers in that group."""
        current = self.current
        if current is None:
            return None, []
        if isinstance(current, _torch().nn.Module):
            return self.names.get(current) or None, []
        layers = [dep.target.module for dep, _ in current]
        root = self.names.get(layers[0]) if layers else None
        related = [self.names[m] for m in layers[1:] if m in self.names and self.names[m] and self.names[m] != root]
        return root, list(dict.fromkeys(related))[:6]


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

        graph, outs = self._traced(module, loaded, lambda: trace_graph(module, args))
        producers = output_layers(module, graph, outs)
        del graph, outs  # they hold the traced forward pass's activations
        heads = list(dict.fromkeys(name for layers in producers for name in layers))
        protected = self._protected(heads, names)
        ignored = [module.get_submodule(n) for n in protected]

        importance = _GroupWatch({
            "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
        }[self.criterion](), names)
        taylor = self._taylor_batches(inputs.get("train_data"), loaded, module) if self.criterion == "taylor" else None

        torch.manual_seed(self.seed)
        target = macs_before * (1.0 - self.macs) if self.macs is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner = self._pruner(module, loaded, args, importance, ignored, protected)
            steps, macs_now = self._prune_steps(module, loaded, args, pruner, importance, taylor, target, macs_before)
            module.zero_grad(set_to_none=True)
            skipped = _warned(caught)
            traced = set(pruner.DG.module2node)

        if target is not None and macs_now > target:
            raise PruneError(
                f"--prune-macs {self.macs}: removed only {1 - macs_now / macs_before:.1%} of the MACs of "
                f"'{loaded.source}' with at most {MAX_RATIO:.0%} of each layer's channels",
                hint=f"protect fewer layers (protected: {', '.join(protected)}) or ask for less",
            )
        kept = {n for n in names.values() if any(n == p or n.startswith(p + ".") for p in protected)}
        skipped.extend(_left_unpruned(module, types, traced, kept))
        self._check(module, loaded, args, producers)

        macs_after, params_after = count_macs_params(module, args)
        removable = [n for n in channels_before if n not in kept and channels_before[n]]
        before = sum(channels_before[n] for n in removable)
        after = sum(_out_channels(module.get_submodule(n)) for n in removable)
        figures = {
            **self._settings(),
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
        return self._save_pruned(module, loaded, attrs_before, figures, out_dir)

    def _settings(self) -> dict[str, Any]:
        """The figures that restate what was asked for."""
        return {
            "criterion": self.criterion,
            "mode": "ratio" if self.ratio is not None else "macs",
            "requested": self.ratio if self.ratio is not None else self.macs,
            "global": self.global_pruning,
            "round_to": self.round_to,
        }

    def _protected(self, heads: list[str], names: dict[Any, str]) -> list[str]:
        """The layers kept whole: those producing an output, then those ``--protect`` patterns match."""
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
        return protected

    def _pruner(self, module: Any, loaded: LoadedModel, args: tuple, importance: _GroupWatch, ignored: list[Any],
                protected: list[str]) -> Any:
        """torch-pruning's pruner over the traced model; refused when it finds no group to prune."""
        tp = _torch_pruning()
        pruner = self._traced(module, loaded, lambda: tp.pruner.BasePruner(
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
        ))
        map_permuted_flattens(pruner.DG)
        importance.watch(pruner.DG)
        groups = sum(1 for _ in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                         root_module_types=pruner.root_module_types))
        if groups == 0:
            raise ConfigError(
                f"nothing to prune in '{loaded.source}': every prunable layer is protected or untraceable",
                hint=f"protected: {', '.join(protected) or 'none'}; protect fewer layers",
            )
        return pruner

    def _prune_steps(self, module: Any, loaded: LoadedModel, args: tuple, pruner: Any, importance: _GroupWatch,
                     taylor: tuple[list[tuple], ClassOutputs] | None, target: float | None, macs_before: int
                     ) -> tuple[int, int]:
        """Prune step by step until the MAC target (one step for a ratio): the steps taken and the MACs left.

        A failure inside torch-pruning is a PruneError naming the layer whose group it was pruning.
        """
        steps = 0
        macs_now = macs_before
        try:
            while True:
                if taylor is not None:
                    _taylor_gradients(module, *taylor)
                for group in pruner.step(interactive=True):
                    importance.current = group
                    group.prune()
                importance.current = None
                steps += 1
                macs_now, _ = count_macs_params(module, args)
                if target is None or macs_now <= target or steps >= MAC_STEPS:
                    break
        except Exception as exc:
            layer, related = importance.failed_on()
            if layer is None:
                raise PruneError(
                    f"torch-pruning failed while pruning '{loaded.source}': {_reason(exc)}",
                    hint="prune less, or --protect the layers around the construct torch-pruning cannot follow",
                ) from None
            also = f" and the layers that depend on it ({', '.join(related)})" if related else ""
            raise PruneError(
                f"torch-pruning failed on layer '{layer}' ({type(module.get_submodule(layer)).__name__}){also} "
                f"of '{loaded.source}': {_reason(exc)}",
                hint=f"--protect '{layer}' (its channels are then kept), or prune less",
            ) from None
        return steps, macs_now

    @staticmethod
    def _save_pruned(module: Any, loaded: LoadedModel, attrs_before: dict[str, dict[str, Any]],
                     figures: dict[str, Any], out_dir: Path) -> PrunedModel:
        """Write the weights, the changed layer attributes and the exported program; the pruned model."""
        torch = _torch()
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

    def _taylor_batches(self, data: CalibrationSet | None, loaded: LoadedModel, module: Any
                        ) -> tuple[list[tuple], ClassOutputs]:
        """Up to TAYLOR_SAMPLES samples in batches, each with a target per output (see _taylor_gradients): for a
        class output, the labels when they are for it, else the unpruned model's classes; None for the others."""
        import numpy as np

        torch = _torch()
        batches = stacked_inputs(data, loaded.spec)
        count = len(next(iter(batches.values())))
        take = np.sort(np.random.default_rng(self.seed).permutation(count)[:TAYLOR_SAMPLES])
        xs = [torch.from_numpy(np.ascontiguousarray(batches[n][take])) for n in loaded.spec.input_names]
        labels = getattr(data, "labels", None)
        labels = None if labels is None else np.asarray(labels)[take]
        with torch.no_grad():
            ref = flatten_outputs(module(*xs))
        classes = class_outputs(ref, labels)
        targets: list[Any] = []
        for k, scores in enumerate(ref):
            if k not in classes:
                targets.append(None)
            elif k == classes.labelled:
                targets.append(torch.from_numpy(labels).long())
            else:
                targets.append(scores.argmax(1))
        batched = []
        for i in range(0, len(take), BATCH):
            batched.append((tuple(x[i:i + BATCH] for x in xs), [None if t is None else t[i:i + BATCH] for t in targets]))
        return batched, classes

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
    def _traced(module: Any, loaded: LoadedModel, trace: Any) -> Any:
        """Run ``trace`` (torch-pruning tracing the model); a failure names the module that autograd lost."""
        with tracking_modules(module) as stack:
            try:
                return trace()
            except Exception as exc:
                raise PruneError(
                    f"torch-pruning cannot trace {_where(module, stack)} of '{loaded.source}': {_reason(exc)}",
                    hint="this module runs something autograd cannot follow (numpy, .item(), in-place tricks); "
                    "rewrite it with torch ops, or build without --prune",
                ) from None

    @staticmethod
    def _check(module: Any, loaded: LoadedModel, args: tuple, producers: list[list[str]]) -> None:
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
        for k, (spec_out, out) in enumerate(zip(loaded.spec.outputs, outs)):
            if isinstance(spec_out.shape, tuple) and tuple(out.shape) != spec_out.concrete_shape():
                layers = producers[k] if k < len(producers) else []
                raise PruneError(
                    f"pruning changed output '{spec_out.name}' of '{loaded.source}' from "
                    f"{spec_out.shape_str()} to {'x'.join(map(str, out.shape))}, although "
                    + (f"{', '.join(layers)}, which torch-pruning's graph says produce it, were kept" if layers
                       else "torch-pruning's graph shows no layer producing it"),
                    hint="torch-pruning lost track of a channel dependency on the way to this output; --protect "
                    "the layers between the last kept one and the output",
                )


def _warned(caught: list[warnings.WarningMessage]) -> list[str]:
    """torch-pruning's warnings, one line each, in order and without repeats."""
    skipped: list[str] = []
    for w in caught:
        if "torch_pruning" not in str(w.filename):
            continue  # torch's own warnings say nothing about what was pruned
        line = str(w.message).strip().splitlines()[0]
        if "Unwrapped parameters" in line:
            line = (f"parameters used outside a layer ({line.split(':', 1)[1].strip()[:200]}): pruned "
                    "along their last non-singleton axis")
        if line not in skipped:
            skipped.append(line)
    return skipped


def _left_unpruned(module: Any, types: tuple[type, ...], traced: set[Any], kept: set[str]) -> list[str]:
    """Prunable layers torch-pruning did not reach, and attention layers whose heads it keeps, with why."""
    torch = _torch()
    lines = []
    for name, sub in module.named_modules():
        if isinstance(sub, types) and sub not in traced and name not in kept:
            lines.append(f"{name} ({type(sub).__name__}): not reached when torch-pruning traced the model "
                         "(detached, computed without autograd, or unused): left unpruned")
        if isinstance(sub, torch.nn.MultiheadAttention) and name not in kept:
            lines.append(f"{name} (MultiheadAttention): keeps its {sub.num_heads} heads; torch-pruning narrows "
                         "each head's width instead (removing whole heads needs separate q/k/v Linear layers)")
    return lines


def _out_channels(sub: Any) -> int:
    for attr in ("out_channels", "out_features", "embed_dim", "hidden_size"):
        value = getattr(sub, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _taylor_gradients(module: Any, batches: list[tuple], classes: ClassOutputs) -> None:
    """Gradients for Taylor importance: of the cross-entropy of the class outputs (labels, or the unpruned
    model's classes), or, for a model without class outputs, of its outputs' energy. A layer that no loss term
    depends on (a box regression head beside the classifier) gets a zero gradient, i.e. no importance of its
    own: the magnitude of its weights does not count in a loss that does not see them."""
    torch = _torch()
    F = torch.nn.functional
    module.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for xs, targets in batches:
            outs = flatten_outputs(module(*xs))
            if any(t is not None for t in targets):
                terms = [F.cross_entropy(classes.logits(k, out), t) for k, (out, t) in enumerate(zip(outs, targets))
                         if t is not None]
            else:
                terms = [out.float().pow(2).mean() for out in outs if out.is_floating_point()]
            if terms:
                sum(terms).backward()
    for param in module.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def stacked_inputs(data: CalibrationSet | None, spec: InputSpec) -> dict[str, np.ndarray]:
    """Every sample of ``data`` concatenated along the batch axis, per input."""
    import numpy as np

    if data is None:
        raise ConfigError("no training data", hint="pass --train-data")
    samples = list(data)
    return {n: np.concatenate([s[n] for s in samples]) for n in spec.input_names}


__all__ = [
    "PruneStage", "PrunedModel", "CRITERIA", "ClassOutputs", "class_outputs", "trainable_module", "rebuild_pruned",
    "count_macs_params", "save_torch_model", "example_args", "trace_graph", "output_layers",
    "map_permuted_flattens", "stacked_inputs",
]
