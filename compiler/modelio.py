"""Small helpers about loaded models shared by the stages: output flattening, factories, torch runs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgec.compiler.errors import ConfigError


def import_callable(spec: str, option: str) -> Callable[..., Any]:
    """Resolve ``module:function`` or ``path/to/file.py:function``."""
    if ":" not in spec:
        raise ConfigError(f"{option} '{spec}' is not of the form module:function", hint="e.g. mypkg.models:build")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            path = Path(mod_name)
            if not path.is_file():
                raise ConfigError(f"{option}: file '{mod_name}' does not exist")
            name = f"_edgec_user_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(
            f"{option}: cannot import module '{mod_name}': {exc}",
            hint="make sure it is importable (installed, or on PYTHONPATH), or pass path/to/file.py:function",
        ) from None
    except ConfigError:
        raise
    except Exception as exc:
        # The user's module raised while being imported: their code, so their error to fix, not ours.
        raise ConfigError(
            f"{option}: importing '{mod_name}' raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
            hint=f"fix the error in '{mod_name}' (run it with python to see the traceback)",
        ) from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"{option}: '{mod_name}' has no callable named '{attr}'")
    return fn


def flatten_outputs(out: Any) -> list[Any]:
    """Tensors of a model's output, in order: a tensor, a tuple/list, or a dict (values in key order)."""
    if isinstance(out, dict):
        items: list[Any] = []
        for v in out.values():
            items.extend(flatten_outputs(v))
        return items
    if isinstance(out, (list, tuple)):
        items = []
        for v in out:
            items.extend(flatten_outputs(v))
        return items
    return [out]


def torch_run(model: Any, feeds: dict[str, Any], input_names: list[str]) -> list[Any]:
    """Run a torch module (or ExportedProgram's module) on numpy feeds; outputs as numpy arrays."""
    import numpy as np
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names)
    with torch.no_grad():
        out = model(*args)
    return [o.detach().cpu().numpy() if hasattr(o, "detach") else np.asarray(o) for o in flatten_outputs(out)]


@contextlib.contextmanager
def one_torch_thread():
    """Run a few checking inferences on one thread: on a small, shared machine torch's default of one thread per
    core is many times slower whenever another process holds a core, and a handful of samples gains nothing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def output_names_for(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def torchscript_to_exported(module: Any, spec: Any, source: str, purpose: str) -> Any:
    """An ExportedProgram's module equal to a TorchScript ``module``, for tools that trace with torch.export.

    torch's own converter (``TS2EPConverter``) does it; the result is checked against the TorchScript model on
    two random inputs shaped like ``spec``, and a conversion that fails or disagrees is an ExportError naming
    the construct.
    """
    import numpy as np
    import torch

    from edgec.compiler.context import quiet_tools
    from edgec.compiler.errors import ExportError

    feeds = [spec.example_feeds(seed=seed) for seed in (0, 1)]
    names = spec.input_names
    args = tuple(torch.from_numpy(v) for v in feeds[0].values())
    try:
        from torch._export.converter import TS2EPConverter

        with quiet_tools("torch._export"):
            exported = TS2EPConverter(module, args).convert()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ExportError(
            f"{purpose} needs an ExportedProgram, and torch's TorchScript converter failed on '{source}': "
            f"{type(exc).__name__}: {reason}",
            hint="pass the model as an ExportedProgram (torch.export.save) or a state_dict with --model-factory; "
            "scripted control flow (prim::If, loops) does not convert, a torch.jit.trace of the model often does",
        ) from None
    converted = exported.module()
    for f in feeds:
        want, got = torch_run(module, f, names), torch_run(converted, f, names)
        worst = max((float(np.max(np.abs(w.astype(np.float64) - g.astype(np.float64))))
                     for w, g in zip(want, got) if w.size and np.issubdtype(w.dtype, np.floating)), default=0.0)
        scale = max((float(np.max(np.abs(w))) for w in want if w.size and np.issubdtype(w.dtype, np.floating)),
                    default=1.0)
        if len(want) != len(got) or worst > 1e-4 * max(1.0, scale):
            raise ExportError(
                f"torch's TorchScript converter changed what '{source}' computes (largest difference {worst:.3g})",
                hint="pass the model as an ExportedProgram (torch.export.save) or a state_dict with --model-factory",
            )
    return converted
