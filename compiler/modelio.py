"""Small helpers about loaded models shared by the stages: output flattening, factories, torch runs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def torch_run(model: Any, feeds: dict[str, np.ndarray], input_names: list[str]) -> list[np.ndarray]:
    """Run a torch module (or ExportedProgram's module) on numpy feeds; outputs as numpy arrays."""
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
