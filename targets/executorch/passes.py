"""Graph rewrites edgec applies to the exported model before ExecuTorch lowers it to XNNPACK.

Each pass takes the GraphModule of an ExportedProgram (``ep.module()``), rewrites it in place and returns what
it changed (one line per rewrite, for the manifest); the caller exports the module again. torch is imported
inside the functions.
"""

from __future__ import annotations

from typing import Any

#: The largest finite float16.
HALF_MAX = 65504.0


def _module_of(node: Any) -> str:
    """The user's module a node came from ("prelu4"), without edgec's wrapper; else the node's name."""
    for path, _cls in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        path = str(path)
        while path == "model" or path.startswith("model."):
            path = path[len("model."):]
        if path:
            return path
    return node.name


def prelu_off_4d(gm: Any) -> list[str]:
    """PReLU on a tensor that is not 4-D becomes clamps, a multiply and an add.

    ``y = prelu(x, w)`` with ``x`` of shape [N, C] (or [N, C, L]) becomes
    ``y = clamp(x, min=0) + w' * clamp(x, max=0)``, ``w'`` being ``w`` shaped to broadcast over axis 1.
    XNNPACK's PReLU takes 4-D NCHW tensors only: ExecuTorch's channels-last pass stops on a PReLU after a
    Linear ("Attempting to convert non-NHWC compatible node to NHWC"), as in MTCNN's RNet/ONet heads.
    """
    import torch

    aten = torch.ops.aten
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.prelu.default:
            continue
        x, w = node.args[:2]
        value = x.meta.get("val") if hasattr(x, "meta") else None
        rank = getattr(value, "ndim", None)
        if rank is None or rank == 4:
            continue
        with gm.graph.inserting_before(node):
            weight = w
            if rank > 2:
                weight = gm.graph.call_function(aten.view.default, (w, [-1] + [1] * (rank - 2)))
            pos = gm.graph.call_function(aten.clamp.default, (x, 0.0, None))
            neg = gm.graph.call_function(aten.clamp.default, (x, None, 0.0))
            scaled = gm.graph.call_function(aten.mul.Tensor, (neg, weight))
            out = gm.graph.call_function(aten.add.Tensor, (pos, scaled))
        out.meta.update(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        changed.append(f"prelu on a {rank}-D tensor at {_module_of(node)} as clamp/mul/add (XNNPACK's PReLU is 4-D only)")
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def float32_to_half(gm: Any) -> list[str]:
    """Every float32 in the graph becomes float16: parameters, buffers, constants and dtype arguments.

    ``mask = attention_mask.to(torch.float32)`` (``x.dtype`` is traced as a constant) becomes
    ``mask = attention_mask.to(torch.float16)``, so a half model does not mix float32 values into float16 ops
    ("expected scalar type Float but found Half"). Scalars beyond float16's range are clamped to it:
    ``bias = (1 - mask) * -1e9`` becomes ``(1 - mask) * -65504``, which still masks a softmax where -1e9 would
    turn into -inf and 0 * -inf into NaN.
    """
    import math

    import torch

    changed = 0
    clamped = 0

    def swap(value: Any) -> Any:
        nonlocal changed, clamped
        if value is torch.float32:
            changed += 1
            return torch.float16
        if isinstance(value, float) and math.isfinite(value) and abs(value) > HALF_MAX:
            clamped += 1
            return math.copysign(HALF_MAX, value)
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    for node in gm.graph.nodes:
        node.args = swap(node.args)
        node.kwargs = {k: swap(v) for k, v in node.kwargs.items()}
        if node.op == "get_attr":
            owner, _, attr = node.target.rpartition(".")
            holder = gm.get_submodule(owner) if owner else gm
            value = getattr(holder, attr, None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and not isinstance(
                value, torch.nn.Parameter
            ) and attr not in dict(holder.named_buffers(recurse=False)):
                setattr(holder, attr, value.half())
    gm.half()
    gm.recompile()
    done = [f"{changed} float32 dtype argument(s) in the graph as float16"] if changed else []
    return done + ([f"{clamped} scalar(s) beyond float16's range clamped to +-{HALF_MAX:g}"] if clamped else [])
