"""What each model output is for: the task that decides how its accuracy is measured.

A flattened top-1 agreement misleads for most outputs that are not a classifier's: a detector's
``[N, 4+C, A]`` tensor, a box-regression head, a sentence embedding. An ``OutputTask`` names the task of one
output and the options its metrics need (class axis, box and score slices, CTC blank, ...). It is declared
(``--task NAME=TASK[:key=value,...]``) or inferred from the ONNX graph and the output's shape by
``resolve_tasks``; the evidence is recorded in ``source`` so a report can say why an output was scored as it
was.

Inference rules (the first that applies; declarations always win):

=============================================================  ===============================================
graph evidence at the output (walking back through Identity,    task
Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Cast)
=============================================================  ===============================================
Softmax / LogSoftmax, 1-D or 2-D (or only 1-sized dims besides  classification (``axis`` = the softmax axis;
batch and class)                                                ``probabilities`` for Softmax)
Softmax / LogSoftmax, 3-D ``[N, T, C]``                          sequence (CTC greedy decode, blank 0)
Softmax / LogSoftmax, 4-D or more with spatial dims             dense (``exclusive``: argmax pixel agreement)
Sigmoid / HardSigmoid, 4-D or more with spatial dims            dense (thresholded maps, channel axis 1)
Sigmoid / HardSigmoid, otherwise                                multilabel
LpNormalization(p=2), or a Div / Mul-by-Reciprocal whose        embedding
divisor is an L2 norm (ReduceL2, Sqrt of a sum of squares)
Concat of a non-probability 4-channel part (boxes) and a        detection (boxes and scores slices from the
Sigmoid part (scores), 3-D output; also a Concat along the      parts, anchors on the other non-batch axis,
anchor axis of such concats (multi-level heads)                 layout cxcywh)
=============================================================  ===============================================

Without graph evidence:

- a non-float output (argmax indices, counts, masks as integers) -> ``generic``;
- the model's only output, float ``[N, C]`` with ``2 <= C < 64`` -> classification of logits; with
  ``C >= 64`` the same only when labels are given: a wide unnormalised vector is as often an embedding (face
  and speaker encoders) as a classifier's logits, and scoring an embedding by top-1 agreement is the
  misleading figure this module exists to avoid. Without labels it stays ``generic``; declare it;
- a float ``[N, k]`` output of a model that has a classification output -> regression (box or landmark heads);
- anything else -> ``generic``: cosine, SNR and errors only, no task figure.

Not decided by inference (declare them): the box layout (``xyxy`` vs ``cxcywh``, inferred as ``cxcywh``), a
YOLOv5-style objectness channel (it looks like one more sigmoid score), a raw anchor-free head whose boxes are
still grid offsets and log sizes (YOLOX exported without its decode: ``grid=8/16/32``), an unnormalised
embedding, CTC vs per-frame argmax decoding of a softmax sequence, and the channel axis of an NHWC map.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from edgec.compiler.errors import ConfigError
from edgec.compiler.types import InputSpec, TensorSpec

TASKS = ("classification", "multilabel", "regression", "embedding", "detection", "dense", "sequence")
#: The fallback: an output scored by cosine, SNR and errors only. It may also be declared.
GENERIC = "generic"
ALL_TASKS = (*TASKS, GENERIC)

#: A single unnormalised [N, C] output this wide is taken for a classifier's logits only when labels exist.
WIDE_OUTPUT = 64


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a task: its kind, default and what it means (the single place an option is defined)."""

    kind: str  # "int", "float", "bool", "slice", "choice", "ints" (A/B/C, positive)
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    nullable: bool = False  # "none" / None is a valid value

    def coerce(self, value: Any) -> Any:
        """The option's value from a declaration's text or a JSON value; ValueError when it does not fit."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if self.nullable:
                return None
            raise ValueError("a value is required")
        if self.kind == "int":
            if isinstance(value, bool) or not re.fullmatch(r"-?\d+(\.0*)?", str(value).strip()):
                raise ValueError("expected an integer")
            return int(float(value))
        if self.kind == "float":
            try:
                return float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError("expected true or false")
        if self.kind == "choice":
            if str(value) not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}")
            return str(value)
        if self.kind == "slice":
            parts = value.split(":") if isinstance(value, str) else list(value)
            if len(parts) != 2 or not all(re.fullmatch(r"\d+", str(p).strip()) for p in parts):
                raise ValueError("expected START:STOP")
            start, stop = int(parts[0]), int(parts[1])
            if not 0 <= start < stop:
                raise ValueError("expected 0 <= START < STOP")
            return (start, stop)
        if self.kind == "ints":
            parts = value.split("/") if isinstance(value, str) else list(value)
            if not parts or not all(re.fullmatch(r"\d+", str(p).strip()) and int(p) > 0 for p in parts):
                raise ValueError("expected positive integers A/B/...")
            return tuple(int(p) for p in parts)
        raise AssertionError(self.kind)

    def kind_text(self) -> str:
        text = {"int": "an integer", "float": "a number", "bool": "true or false", "slice": "START:STOP",
                "ints": "positive integers A/B/...", "choice": "one of " + ", ".join(self.choices)}[self.kind]
        return text + (", or none" if self.nullable else "")

    def text(self, value: Any) -> str:
        if value is None:
            return "none"
        if self.kind == "slice":
            return f"{value[0]}:{value[1]}"
        if self.kind == "ints":
            return "/".join(str(v) for v in value)
        if self.kind == "bool":
            return "true" if value else "false"
        return str(value)


def _axis(default: int | None, what: str, nullable: bool = False) -> Option:
    return Option("int", default, what, nullable=nullable)


_PROBS = Option("bool", False, "the output is already Softmax/Sigmoid probabilities (else logits)")

#: Every option of every task. Declarations, ``from_dict`` and the docs all read this table.
OPTIONS: dict[str, dict[str, Option]] = {
    "classification": {"axis": _axis(-1, "class axis"), "probabilities": _PROBS},
    "multilabel": {
        "axis": _axis(-1, "label axis"),
        "probabilities": _PROBS,
        "threshold": Option("float", 0.5, "a label is on when its probability is at least this"),
    },
    "regression": {},
    "embedding": {"axis": _axis(-1, "embedding (feature) axis; rows are all other positions")},
    "detection": {
        "layout": Option("choice", "cxcywh", "box coordinates", choices=("cxcywh", "xyxy")),
        "boxes": Option("slice", (0, 4), "box channels START:STOP along the channel axis"),
        "scores": Option("slice", None, "class-score channels START:STOP (default: after boxes/objectness)",
                         nullable=True),
        "anchor_axis": _axis(None, "axis holding the anchors (2 for [N, 4+C, A], 1 for [N, A, 4+C])",
                             nullable=True),
        "objectness": _axis(None, "channel of an objectness score multiplied into the class scores",
                            nullable=True),
        "probabilities": Option("bool", True, "scores are already sigmoid probabilities (else logits)"),
        "grid": Option("ints", None, "raw anchor-free head (YOLOX without its decode): box centres are offsets from "
                       "grid cells and sizes are log sizes, at these strides S1/S2/... (e.g. 8/16/32), anchors "
                       "level by level, row-major; decoded to pixels before scoring", nullable=True),
        "grid_width": Option("int", None, "input width in pixels for the grid decode (default: a square input)",
                             nullable=True),
    },
    "dense": {
        "axis": _axis(1, "channel/class axis of the map (none: no channel axis)", nullable=True),
        "threshold": Option("float", 0.5, "a pixel is on when its probability is at least this"),
        "probabilities": Option("bool", True, "the map holds probabilities (else logits)"),
        "exclusive": Option("bool", False, "classes along the axis are exclusive (softmax map): argmax per pixel"),
    },
    "sequence": {
        "axis": _axis(-1, "class (vocabulary) axis"),
        "probabilities": _PROBS,
        "decode": Option("choice", "ctc", "greedy decoding", choices=("ctc", "argmax")),
        "blank": Option("int", 0, "CTC blank index"),
        "time_axis": _axis(None, "time axis (default: the axis that is neither batch nor class; 0 for a "
                           "time-major [T, N, C] output, whose batch axis is then 1)", nullable=True),
    },
    GENERIC: {},
}


def _complete(task: str, options: Mapping[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    """All of ``task``'s options, given ones coerced and the rest at their defaults, as sorted pairs."""
    table = OPTIONS[task]
    unknown = sorted(set(options) - set(table))
    if unknown:
        valid = ", ".join(sorted(table)) or f"none ({task} takes no options)"
        raise ConfigError(f"unknown option '{unknown[0]}' for task {task} in {where}", hint=f"valid options: {valid}")
    values = {}
    for key, opt in table.items():
        if key not in options:
            values[key] = opt.default
            continue
        try:
            values[key] = opt.coerce(options[key])
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"bad value '{options[key]}' for option {key} of task {task} in {where}: {e}",
                hint=f"{key}: {opt.description}; {opt.kind_text()}",
            ) from None
    return tuple(sorted(values.items()))


@dataclasses.dataclass(frozen=True)
class OutputTask:
    """The task of one model output, its options (all of them, defaults filled in) and why it was chosen.

    ``options`` may be given as a mapping; it is stored as sorted ``(key, value)`` pairs so the task stays
    hashable. ``source`` is ``"declared"`` or ``"inferred: <evidence>"``.
    """

    output: str
    task: str
    options: tuple[tuple[str, Any], ...] = ()
    source: str = "declared"

    def __post_init__(self) -> None:
        if self.task not in ALL_TASKS:
            raise ConfigError(
                f"unknown task '{self.task}' for output '{self.output}'", hint=f"use one of: {', '.join(ALL_TASKS)}"
            )
        given = dict(self.options) if isinstance(self.options, Mapping) else dict(tuple(self.options))
        object.__setattr__(self, "options", _complete(self.task, given, f"output '{self.output}'"))

    def option(self, key: str) -> Any:
        for k, v in self.options:
            if k == key:
                return v
        raise KeyError(f"task {self.task} has no option '{key}'")

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def replace(self, **options: Any) -> OutputTask:
        return OutputTask(self.output, self.task, {**self.opts, **options}, self.source)

    def to_dict(self) -> dict[str, Any]:
        opts = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}
        return {"output": self.output, "task": self.task, "options": opts, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputTask:
        return cls(d["output"], d["task"], dict(d.get("options", {})), d.get("source", "declared"))

    def describe(self) -> str:
        """One line for a human, e.g. ``output0: detection (cxcywh boxes 0:4, scores 4:84, anchors on axis 2;
        inferred: concat of boxes and sigmoid scores)``."""
        o = self.opts
        table = OPTIONS[self.task]
        details: list[str] = []
        if self.task == "detection":
            scores = "after the boxes" if o["scores"] is None else table["scores"].text(o["scores"])
            details.append(f"{o['layout']} boxes {table['boxes'].text(o['boxes'])}, scores {scores}")
            if o["objectness"] is not None:
                details.append(f"objectness {o['objectness']}")
            details.append("anchors on the longer axis" if o["anchor_axis"] is None
                           else f"anchors on axis {o['anchor_axis']}")
            if not o["probabilities"]:
                details.append("score logits")
            if o["grid"] is not None:
                details.append(f"grid decode at strides {table['grid'].text(o['grid'])}")
        elif self.task == "dense":
            details.append("no channel axis" if o["axis"] is None else f"channel axis {o['axis']}")
            details.append("argmax per pixel" if o["exclusive"] else f"threshold {o['threshold']:g}")
        elif self.task == "sequence":
            details.append(f"{o['decode']} decode" + (f", blank {o['blank']}" if o["decode"] == "ctc" else ""))
            details.append(f"class axis {o['axis']}" + ("" if o["time_axis"] is None else
                                                         f", time axis {o['time_axis']}"))
        elif self.task in ("classification", "multilabel"):
            details.append(f"{'class' if self.task == 'classification' else 'label'} axis {o['axis']}")
            details.append("probabilities" if o["probabilities"] else "logits")
        elif self.task == "embedding":
            details.append(f"feature axis {o['axis']}")
        elif self.task == GENERIC:
            details.append("cosine/SNR/error only")
        head = ", ".join(details)
        return f"{self.output}: {self.task} ({head + '; ' if head else ''}{self.source})"


# ---------------------------------------------------------------------------------------------------------------
# Declarations


_DECLARATION = "NAME=TASK[:key=value,...]"
_EXAMPLE = "e.g. output0=detection:layout=cxcywh,boxes=0:4,scores=4:84,anchor_axis=2 or logits=classification:axis=1"


def parse_declaration(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=TASK[:key=value,...]`` -> ``(output, task, options)``, options coerced to their types.

    The output name is everything before the first ``=`` (so ``Identity:0=classification`` works); slice values
    are written ``START:STOP``.
    """
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq or not name or not rest.strip():
        raise ConfigError(f"cannot parse task declaration '{text}'", hint=f"write {_DECLARATION}, {_EXAMPLE}")
    task, _, opts_text = rest.partition(":")
    task = task.strip()
    if task not in ALL_TASKS:
        raise ConfigError(
            f"unknown task '{task}' in task declaration '{text}'", hint=f"use one of: {', '.join(ALL_TASKS)}"
        )
    options: dict[str, Any] = {}
    if opts_text.strip():
        for item in opts_text.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key or not re.fullmatch(r"[a-z_]+", key):
                raise ConfigError(
                    f"cannot parse option '{item}' in task declaration '{text}'",
                    hint=f"write key=value pairs separated by commas, {_EXAMPLE}",
                )
            if key in options:
                raise ConfigError(f"option '{key}' given twice in task declaration '{text}'")
            options[key] = value.strip()
    completed = dict(_complete(task, options, f"task declaration '{text}'"))
    return name, task, {k: completed[k] for k in options}


def _declared(declared: Iterable[str] | Mapping[str, Any] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Declarations from CLI strings, or a recipe mapping ``{output: "TASK[:...]" | {"task": ..., key: value}}``."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if declared is None:
        return out
    if isinstance(declared, Mapping):
        items = []
        for name, value in declared.items():
            if isinstance(value, str):
                items.append(parse_declaration(f"{name}={value}"))
            elif isinstance(value, Mapping) and "task" in value:
                opts = {k: v for k, v in value.items() if k != "task"}
                task = str(value["task"])
                if task not in ALL_TASKS:
                    raise ConfigError(f"unknown task '{task}' declared for output '{name}'",
                                      hint=f"use one of: {', '.join(ALL_TASKS)}")
                completed = dict(_complete(task, opts, f"the task declared for output '{name}'"))
                items.append((str(name), task, {k: completed[k] for k in opts}))
            else:
                raise ConfigError(
                    f"cannot read the task declared for output '{name}': {value!r}",
                    hint='give "TASK[:key=value,...]" or a mapping with a "task" key',
                )
    else:
        items = [parse_declaration(text) for text in declared]
    for name, task, opts in items:
        if name in out:
            raise ConfigError(f"output '{name}' has two task declarations", hint="declare each output once")
        out[name] = (task, opts)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shape checks, shared with the metrics (which call them with concrete shapes)


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _norm_axis(task: OutputTask, key: str, shape: tuple[Any, ...], allow_batch: bool = False) -> int | None:
    axis = task.option(key)
    if axis is None:
        return None
    rank = len(shape)
    if not -rank <= axis < rank or (not allow_batch and rank > 1 and axis % rank == 0):
        raise ConfigError(
            f"output '{task.output}' has shape {_shape_text(shape)}: it has no {key} {axis} for task {task.task}",
            hint=f"{key} must be one of the axes 1..{rank - 1} (or negative from the end); declare "
            f"{task.output}={task.task}:{key}=N",
        )
    return axis % rank


def class_axis(task: OutputTask, shape: tuple[Any, ...]) -> int | None:
    """The task's class/feature axis normalised for ``shape``; ConfigError when the shape has no such axis."""
    return _norm_axis(task, "axis", shape, allow_batch=len(shape) == 1)


@dataclasses.dataclass(frozen=True)
class DetectionLayout:
    """Where a detection output keeps its anchors, boxes and scores, for one concrete or symbolic shape."""

    anchor_axis: int
    channel_axis: int
    boxes: tuple[int, int]
    scores: tuple[int, int] | None  # None only for a dynamic channel axis: the channels after the boxes
    objectness: int | None


def detection_layout(task: OutputTask, shape: tuple[Any, ...]) -> DetectionLayout:
    """The anchor/channel axes and the box/score slices of a detection output of ``shape`` ([N, 4+C, A] or
    [N, A, 4+C]); defaults filled from the shape (the scores slice stays None while the channel axis is
    dynamic). ConfigError, naming the output, when they do not fit."""
    o = task.opts
    where = f"output '{task.output}' has shape {_shape_text(shape)}"
    if len(shape) != 3:
        raise ConfigError(
            f"{where}: a detection output must be 3-D, [N, 4+C, anchors] or [N, anchors, 4+C]",
            hint=f"declare it as generic ({task.output}=generic) or give the 3-D output of the head",
        )
    anchor = _norm_axis(task, "anchor_axis", shape)
    if anchor is None:
        a, b = shape[1], shape[2]
        if isinstance(a, int) and isinstance(b, int):
            anchor = 1 if a > b else 2
        elif isinstance(a, int) != isinstance(b, int):
            anchor = 1 if not isinstance(a, int) else 2  # the dynamic axis is the anchors'
        else:
            raise ConfigError(f"{where}: cannot tell which axis holds the anchors",
                              hint=f"declare {task.output}=detection:anchor_axis=1 (or 2)")
    channel = 3 - anchor
    channels = shape[channel]
    boxes = o["boxes"]
    if boxes[1] - boxes[0] != 4:
        raise ConfigError(f"boxes={boxes[0]}:{boxes[1]} for output '{task.output}' is not 4 channels",
                          hint="boxes=START:STOP spans the 4 box coordinates, e.g. boxes=0:4")
    objectness = o["objectness"]
    scores = o["scores"]
    if scores is None and isinstance(channels, int):
        scores = (max(boxes[1], objectness + 1 if objectness is not None else 0), channels)
    used = [boxes[1]] + ([scores[1]] if scores else []) + ([objectness + 1] if objectness is not None else [])
    if (scores is not None and scores[0] >= scores[1]) or (isinstance(channels, int) and max(used) > channels):
        raise ConfigError(
            f"{where}: boxes {boxes[0]}:{boxes[1]}, scores {scores[0]}:{scores[1]}"
            + (f", objectness {objectness}" if objectness is not None else "")
            + f" do not fit its {channels} channels on axis {channel}",
            hint=f"declare {task.output}=detection:boxes=0:4,scores=4:{channels} (or anchor_axis to swap the axes)",
        )
    if o["grid"] is not None:
        if o["layout"] != "cxcywh":
            raise ConfigError(f"output '{task.output}': grid={table_text(task, 'grid')} decodes centre offsets and "
                              "log sizes, which is layout cxcywh", hint="drop layout=xyxy or grid=")
        if isinstance(shape[anchor], int):
            grid_levels(task, shape[anchor])
    return DetectionLayout(anchor, channel, boxes, scores, objectness)


def table_text(task: OutputTask, name: str) -> str:
    return OPTIONS[task.task][name].text(task.opts[name])


def grid_levels(task: OutputTask, anchors: int) -> list[tuple[int, int, int]]:
    """(rows, columns, stride) of each level of a detection output's ``grid``, for ``anchors`` anchors: the
    input is square unless ``grid_width`` is given. ConfigError, naming the output, when they do not fit."""
    strides, width = task.opts["grid"], task.opts["grid_width"]
    density = sum(1.0 / (s * s) for s in strides)  # anchors per input pixel
    if width is None:
        height = width = round((anchors / density) ** 0.5)
    else:
        height = round(anchors / (density * width))
    levels = [(height // s, width // s, s) for s in strides]
    if sum(r * c for r, c, _ in levels) != anchors:
        given = "a square input" if task.opts["grid_width"] is None else f"an input {width} pixels wide"
        raise ConfigError(
            f"output '{task.output}' has {anchors} anchors, which {given} does not give at strides "
            f"{table_text(task, 'grid')}",
            hint="check grid=S1/S2/... (the head's strides, finest first) and give grid_width=W for a non-square input")
    return levels


def check_shape(task: OutputTask, shape: tuple[Any, ...]) -> OutputTask:
    """``task`` checked against its output's shape, with shape-dependent defaults (detection axes and slices)
    filled in. ConfigError naming the output and its shape when the task does not fit."""
    if task.task == "detection":
        lay = detection_layout(task, shape)
        return task.replace(anchor_axis=lay.anchor_axis, scores=lay.scores)
    if "axis" in task.opts:
        class_axis(task, shape)
    if task.task == "sequence":
        sequence_axes(task, shape)
    return task


def sequence_axes(task: OutputTask, shape: tuple[Any, ...]) -> tuple[int, int]:
    """(time axis, class axis) of a sequence output: [N, T, C] by default, [T, C] taken as one sequence; with
    time_axis=0 a time-major [T, N, C] output (a CRNN's LSTM without batch_first), the batch the remaining axis."""
    cls = class_axis(task, shape)
    if len(shape) not in (2, 3):
        raise ConfigError(f"output '{task.output}' has shape {_shape_text(shape)}: a sequence output must be "
                          "[N, T, C] (or [T, C])", hint=f"declare {task.output}=generic, or give the per-frame scores")
    time = task.option("time_axis")
    if time is None:
        rest = [a for a in range(len(shape)) if a != cls and (len(shape) == 2 or a != 0)]
        time = rest[0]
    else:
        time = _norm_axis(task, "time_axis", shape, allow_batch=True)
        if time == cls:
            raise ConfigError(f"output '{task.output}': time_axis and axis are both {time}")
    return time, cls


# ---------------------------------------------------------------------------------------------------------------
# Resolution: declarations, then graph evidence, then the shape rules


def resolve_tasks(
    spec: InputSpec,
    declared: Iterable[str] | Mapping[str, Any] | None = None,
    model: Any = None,
    has_labels: bool = False,
) -> list[OutputTask]:
    """One ``OutputTask`` per output of ``spec.outputs``, in order.

    Args:
        spec: the model's signature; its outputs' shapes and dtypes drive the shape rules and checks.
        declared: ``NAME=TASK[:key=value,...]`` strings, or a mapping ``{name: "TASK[:...]" | {"task": ...}}``.
        model: the ONNX ``ModelProto`` the outputs come from, for graph evidence; None to use shapes only.
        has_labels: whether evaluation labels exist (lets a wide ``[N, C]`` output count as a classifier).
    """
    decl = _declared(declared)
    names = [t.name for t in spec.outputs]
    unknown = [n for n in decl if n not in names]
    if unknown:
        shapes = ", ".join(f"{t.name} {_shape_text(t.shape)}" for t in spec.outputs) or "none"
        raise ConfigError(f"task declared for output '{unknown[0]}', which the model does not have",
                          hint=f"the model's outputs: {shapes}")
    graph = _Graph(model) if model is not None else None
    tasks: dict[str, OutputTask] = {}
    for t in spec.outputs:
        if t.name in decl:
            task, opts = decl[t.name]
            tasks[t.name] = OutputTask(t.name, task, opts, "declared")
        elif graph is not None and _is_float(t) and (found := graph.evidence(t.name, t.shape)) is not None:
            task, opts, evidence = found
            tasks[t.name] = OutputTask(t.name, task, opts, f"inferred: {evidence}")
    for t in spec.outputs:
        if t.name not in tasks:
            task, opts, evidence = _shape_rule(t, spec.outputs, tasks, has_labels)
            tasks[t.name] = OutputTask(t.name, task, opts, f"inferred: {evidence}")
    return [check_shape(tasks[t.name], t.shape) for t in spec.outputs]


def _is_float(t: TensorSpec) -> bool:
    return t.dtype.startswith(("float", "bfloat"))


def _shape_rule(
    t: TensorSpec, outputs: tuple[TensorSpec, ...], known: Mapping[str, OutputTask], has_labels: bool
) -> tuple[str, dict[str, Any], str]:
    if not _is_float(t):
        return GENERIC, {}, f"{t.dtype} output (indices or counts?): compared element-wise"
    width = t.shape[1] if len(t.shape) == 2 else None
    if len(outputs) == 1 and isinstance(width, int) and width >= 2:
        if width < WIDE_OUTPUT:
            return "classification", {"axis": -1}, f"the only output, [N, {width}] float: logits assumed"
        if has_labels:
            return "classification", {"axis": -1}, f"the only output, [N, {width}] float, and labels given"
        return GENERIC, {}, (f"[N, {width}] float with no labels and no Softmax or L2 norm seen: logits or an "
                             f"embedding; declare {t.name}=classification or {t.name}=embedding")
    if isinstance(width, int) and any(k.task == "classification" for k in known.values()):
        return "regression", {}, f"[N, {width}] float beside a classification output"
    return GENERIC, {}, "no task evidence"


_PASS_THROUGH = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"})
# Ops that keep values inside [0, 1] when their data input is there (for telling score channels from boxes).
_RANGE_KEEPING = _PASS_THROUGH | {"Slice", "Split", "Gather", "Expand", "Tile"}
# Ops between an L2 norm and the Div that uses it: eps clamps, broadcasts.
_NORM_WRAPPERS = frozenset({"Identity", "Cast", "Expand", "Clip", "Max", "Add", "Unsqueeze", "Reshape", "Squeeze"})


class _Graph:
    """Producers, constants and (inferred) shapes of an ONNX graph, and the evidence rules above."""

    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except (onnx.shape_inference.InferenceError, ValueError):
            pass  # shapes are evidence, not a requirement: rules that need an unknown shape stay silent
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.shapes: dict[str, tuple[Any, ...]] = {}
        for vi in (*g.input, *g.value_info, *g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in vi.type.tensor_type.shape.dim
                )
        self.consts = {init.name: numpy_helper.to_array(init) for init in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        self.consts[n.output[0]] = onnx.helper.get_attribute_value(a)
        for name, arr in self.consts.items():
            self.shapes.setdefault(name, tuple(getattr(arr, "shape", ())))

    @staticmethod
    def attr(node: Any, name: str, default: Any = None) -> Any:
        import onnx

        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def walk(self, name: str, through: frozenset[str] = _PASS_THROUGH) -> tuple[Any, list[Any]]:
        """The first producer of ``name`` that is not in ``through``, and the nodes passed (output side first)."""
        chain: list[Any] = []
        node = self.producer.get(name)
        while node is not None and node.op_type in through and len(chain) < 64:
            chain.append(node)
            node = self.producer.get(node.input[0])
        return node, chain

    def map_axis(self, axis: int | None, chain: list[Any]) -> int | None:
        """``axis`` of the tensor at the end of ``chain`` (the walk's terminal op output) in the coordinates of
        the chain's first node's output; None where a reshape makes it unknowable."""
        for node in reversed(chain):
            if axis is None:
                return None
            if node.op_type in ("Identity", "Cast"):
                continue
            if node.op_type == "Transpose":
                rank = len(self.shapes.get(node.input[0]) or ()) or None
                perm = self.attr(node, "perm") or (list(range(rank))[::-1] if rank else None)
                axis = list(perm).index(axis) if perm and axis in perm else None
                continue
            axis = _reshaped_axis(self.shapes.get(node.input[0]), self.shapes.get(node.output[0]), axis)
        return axis

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def evidence(self, name: str, shape: tuple[Any, ...]) -> tuple[str, dict[str, Any], str] | None:
        node, chain = self.walk(name)
        if node is None:
            return None
        rank = len(shape)
        op = node.op_type
        if op in ("Softmax", "LogSoftmax"):
            in_rank = self.rank(node.output[0]) or (rank if not chain else None)
            axis = self.attr(node, "axis", -1 if self.opset >= 13 else 1)
            axis = self.map_axis(axis % in_rank if in_rank else None, chain)
            lost = axis is None
            if lost:
                axis = rank - 1 if rank < 4 else 1
            word = op.lower().replace("logsoftmax", "log-softmax")
            where = f"{word} over axis {axis}" + (" (axis assumed: lost in a reshape)" if lost else "")
            opts = {"axis": axis, "probabilities": op == "Softmax"}
            rest = [d for i, d in enumerate(shape) if i not in (0, axis)]
            if rank <= 2 or all(d == 1 for d in rest):
                return "classification", opts, where
            if rank == 3:
                return "sequence", {**opts, "decode": "ctc"}, f"{where} of a [N, T, C] output: CTC assumed"
            return "dense", {**opts, "exclusive": True}, f"{where} of a {rank}-D map"
        if op in ("Sigmoid", "HardSigmoid"):
            spatial = [d for d in shape[2:]]
            if rank >= 4 and not all(d == 1 for d in spatial):
                return "dense", {"axis": 1, "probabilities": True}, f"sigmoid of a {rank}-D map"
            axis = 1 if rank >= 4 else -1
            return "multilabel", {"axis": axis, "probabilities": True}, "sigmoid output"
        if rank >= 2 and (norm := self._l2_normalised(node)) is not None:
            axis, how = norm
            axis = self.map_axis(axis, chain) if axis is not None else None
            return "embedding", {"axis": -1 if axis is None else axis}, f"L2-normalised rows ({how})"
        if op == "Concat" and rank == 3:
            layout = self._channel_layout(name)
            if layout is not None:
                channel, boxes, scores = layout
                if channel in (1, 2):
                    opts = {"boxes": boxes, "scores": scores, "anchor_axis": 3 - channel, "layout": "cxcywh"}
                    return "detection", opts, "concat of boxes and sigmoid scores"
        return None

    # -- embeddings -------------------------------------------------------------------------------------------

    def _l2_normalised(self, node: Any) -> tuple[int | None, str] | None:
        """(normalisation axis in the node's output coordinates, how) when ``node`` divides by an L2 norm."""
        if node.op_type == "LpNormalization" and self.attr(node, "p", 2) == 2:
            rank = self.rank(node.output[0])
            axis = self.attr(node, "axis", -1)
            return (axis % rank if rank else None), "LpNormalization"
        divisor = None
        if node.op_type == "Div":
            divisor = node.input[1]
        elif node.op_type == "Mul":
            for inp in node.input:
                recip = self.producer.get(inp)
                if recip is not None and recip.op_type == "Reciprocal":
                    divisor = recip.input[0]
        if divisor is None:
            return None
        found = self._norm_op(divisor)
        if found is None:
            return None
        reduce_node, how = found
        rank = self.rank(node.output[0])
        axes = self.attr(reduce_node, "axes")
        if axes is None and len(reduce_node.input) > 1:
            axes = self.consts.get(reduce_node.input[1])
            axes = None if axes is None else [int(a) for a in list(getattr(axes, "ravel", lambda: [axes])())]
        axis = int(axes[0]) % rank if axes is not None and len(axes) == 1 and rank else None
        return axis, f"divided by {how}"

    def _norm_op(self, name: str) -> tuple[Any, str] | None:
        node, _ = self.walk(name, _NORM_WRAPPERS)
        if node is None:
            return None
        if node.op_type == "ReduceL2":
            return node, "ReduceL2"
        if node.op_type == "Sqrt" or (node.op_type == "Pow" and _const_is(self.consts.get(node.input[1]), 0.5)):
            inner, _ = self.walk(node.input[0], _NORM_WRAPPERS)
            if inner is not None and self._sum_of_squares(inner):
                return inner, f"{node.op_type}({inner.op_type}(x*x))"
        return None

    def _sum_of_squares(self, node: Any) -> bool:
        if node.op_type == "ReduceSumSquare":
            return True
        if node.op_type != "ReduceSum":
            return False
        sq = self.producer.get(node.input[0])
        if sq is None:
            return False
        if sq.op_type == "Mul":
            return sq.input[0] == sq.input[1]
        return sq.op_type == "Pow" and _const_is(self.consts.get(sq.input[1]), 2.0)

    # -- detection heads --------------------------------------------------------------------------------------

    def _is_probability(self, name: str, depth: int = 0) -> bool:
        node = self.producer.get(name)
        if node is None or depth > 32:
            return False
        op = node.op_type
        if op in ("Sigmoid", "HardSigmoid", "Softmax"):
            return True
        if op in _RANGE_KEEPING:
            return self._is_probability(node.input[0], depth + 1)
        if op in ("Mul", "Concat"):
            return all(self._is_probability(i, depth + 1) for i in node.input)
        return False

    def _channel_layout(self, name: str, depth: int = 0) -> tuple[int, tuple[int, int], Any] | None:
        """(channel axis in ``name``'s coordinates, boxes slice, scores slice) when ``name`` is a concat of a
        4-channel non-probability part and a probability part, or a concat of such concats along another axis."""
        node, chain = self.walk(name)
        if node is None or node.op_type != "Concat" or depth > 4:
            return None
        rank = self.rank(node.output[0]) or (len(self.shapes.get(name) or ()) if not chain else None)
        if not rank:
            return None
        axis = self.attr(node, "axis") % rank
        found = self._split_parts(node, axis)
        if found is None:
            subs = [self._channel_layout(i, depth + 1) for i in node.input]
            if not subs or any(s is None for s in subs) or len(set(subs)) != 1 or subs[0][0] == axis:
                return None
            found = subs[0]
        channel = self.map_axis(found[0], chain)
        return None if channel is None else (channel, found[1], found[2])

    def _split_parts(self, node: Any, axis: int) -> tuple[int, tuple[int, int], Any] | None:
        probs = [self._is_probability(i) for i in node.input]
        if all(probs) or not any(probs):
            return None
        sizes: list[Any] = []
        for inp in node.input:
            shape = self.shapes.get(inp)
            size = shape[axis] if shape is not None and len(shape) > axis else None
            sizes.append(size if isinstance(size, int) and size > 0 else None)
        out = self.shapes.get(node.output[0])
        total = out[axis] if out is not None and len(out) > axis and isinstance(out[axis], int) else None
        missing = [i for i, s in enumerate(sizes) if s is None]
        if len(missing) == 1 and total is not None:
            sizes[missing[0]] = total - sum(s for s in sizes if s is not None)
        # the box part and the score part must each be one contiguous run
        runs = [probs[0]] + [p for a, p in itertools.pairwise(probs) if a != p]
        if len(runs) != 2:
            return None
        if any(s is not None and s <= 0 for s in sizes):
            return None
        if any(s is None for s in sizes):
            # dynamic class count (a detector exported with dynamic H/W): enough when the boxes come first
            box_sizes = [s for s, p in zip(sizes, probs) if not p]
            if probs[0] or None in box_sizes or sum(box_sizes) != 4:
                return None
            return axis, (0, 4), None
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        box_idx = [i for i, p in enumerate(probs) if not p]
        score_idx = [i for i, p in enumerate(probs) if p]
        box_start, box_stop = starts[box_idx[0]], starts[box_idx[-1]] + sizes[box_idx[-1]]
        if box_stop - box_start != 4:
            return None
        scores = (starts[score_idx[0]], starts[score_idx[-1]] + sizes[score_idx[-1]])
        return axis, (box_start, box_stop), scores


def _const_is(value: Any, target: float) -> bool:
    import numpy as np

    if value is None:
        return False
    arr = np.asarray(value, dtype=np.float64)
    return arr.size == 1 and float(arr.ravel()[0]) == target


def _reshaped_axis(before: tuple[Any, ...] | None, after: tuple[Any, ...] | None, axis: int) -> int | None:
    """Where ``axis`` of a tensor of shape ``before`` is after a reshape to ``after``: the axis of the same size
    whose leading dims hold the same elements (static product and dynamic names equal); None if none is."""
    if before is None or after is None or axis >= len(before) or before[axis] is None:
        return None

    def key(dims: tuple[Any, ...]) -> tuple[int, tuple[str, ...]] | None:
        static, names = 1, []
        for d in dims:
            if d is None:
                return None
            if isinstance(d, int):
                static *= d
            else:
                names.append(d)
        return static, tuple(sorted(names))

    want = key(before[:axis])
    if want is None:
        return None
    for b, d in enumerate(after):
        if d == before[axis] and key(after[:b]) == want:
            return b
    return None
