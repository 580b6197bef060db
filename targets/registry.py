"""The registry: a static name -> "module:Class" table, imported lazily, plus third-party entry points.

Device profiles (``profiles/*.yaml``) name a backend, the precisions it allows and its defaults; ``--target``
accepts a profile name, one of its aliases, or a backend name.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from importlib import metadata, resources
from typing import Any

from edgec.compiler.errors import ConfigError, TargetUnavailableError
from edgec.compiler.types import Precision
from edgec.targets.base import Target

BUILTIN: dict[str, str] = {
    "executorch": "edgec.targets.executorch.target:ExecuTorchTarget",
    "onnxruntime": "edgec.targets.onnxruntime.target:OnnxRuntimeTarget",
    "tensorrt": "edgec.targets.tensorrt.target:TensorRTTarget",
    "tflite": "edgec.targets.tflite.target:TFLiteTarget",
    "tflm": "edgec.targets.tflm.target:TFLMTarget",
}
ENTRY_POINT_GROUP = "edgec.targets"


@functools.cache
def backends() -> dict[str, str]:
    table = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(ep.name, ep.value)
    return table


def target_class(name: str) -> type[Target]:
    table = backends()
    if name not in table:
        raise ConfigError(f"unknown backend '{name}'", hint=f"known backends: {', '.join(sorted(table))}")
    module, _, cls = table[name].partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    backend: str
    description: str
    precisions: frozenset[Precision]
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    limits: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    #: precision -> why this device does not take it (said when it is asked for)
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def folder(self) -> str:
        """The build sub-folder: the name the user knows the target by."""
        return self.name


@functools.cache
def profiles() -> dict[str, Profile]:
    import yaml

    found: dict[str, Profile] = {}
    folder = resources.files("edgec.targets") / "profiles"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        d = yaml.safe_load(entry.read_text())
        found[d["name"]] = Profile(
            name=d["name"],
            backend=d["backend"],
            description=d.get("description", ""),
            precisions=frozenset(Precision.parse(p) for p in d.get("precisions", [])),
            aliases=tuple(d.get("aliases", ())),
            options=dict(d.get("options") or {}),
            limits=dict(d.get("limits") or {}),
            unsupported={str(k): str(v) for k, v in (d.get("unsupported") or {}).items()},
        )
    return found


def resolve_target(name: str) -> Profile:
    """A profile by name or alias; a backend name gives a profile allowing all its precisions."""
    table = profiles()
    if name in table:
        return table[name]
    for p in table.values():
        if name in p.aliases:
            return p
    if name in backends():
        cls = target_class(name)
        return Profile(name, name, f"the {name} backend with its defaults", cls.precisions)
    names = sorted(set(table) | {a for p in table.values() for a in p.aliases} | set(backends()))
    raise ConfigError(f"unknown target '{name}'", hint=f"valid targets: {', '.join(names)} (see: edgec targets)")


def backend_profile(name: str, backend: str, what: str, hint: str = "use one of") -> Profile:
    """The profile ``name`` (or alias) of ``backend``; a ConfigError saying it is not ``what`` otherwise, with
    ``hint`` followed by that backend's profiles."""
    table = profiles()
    profile = table.get(name) or next((p for p in table.values() if name in p.aliases), None)
    if profile is None or profile.backend != backend:
        ours = sorted(p.name for p in table.values() if p.backend == backend)
        raise ConfigError(f"'{name}' is not {what}", hint=f"{hint}: {', '.join(ours)} (see: edgec targets)")
    return profile


def availability(backend: str) -> tuple[bool, str]:
    """(available, why not) for a backend, without raising."""
    try:
        target_class(backend).check_available()
    except TargetUnavailableError as exc:
        return False, f"{exc.message}; {exc.hint}" if exc.hint else exc.message
    except ImportError as exc:
        return False, f"cannot import the backend: {exc}"
    return True, ""
