"""Pipeline: runs stages, caches their outputs, records what each did.

Stages are added in order and keyed as they are added (a stage's key hashes its options, the tool versions
it declares and the keys of the values it reads). Values are produced lazily: a stage whose output is in the
cache is restored without running the stages before it, so a rebuild with unchanged inputs does not even
load the checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from edgec.compiler.cache import hash_key
from edgec.compiler.context import BuildContext
from edgec.compiler.errors import EdgecError, StageError
from edgec.compiler.stage import Stage
from edgec.compiler.versions import tool_versions


@dataclasses.dataclass
class StageRecord:
    stage: str
    key: str
    options: dict[str, Any]
    cached: bool = False
    ran: bool = False
    seconds: float = 0.0
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Pipeline:
    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
        self._values: dict[str, Any] = {}
        self._keys: dict[str, str] = {}
        self._producer: dict[str, Stage] = {}
        self.records: dict[str, StageRecord] = {}
        self._done: list[str] = []

    def seed(self, name: str, value: Any, key: str) -> None:
        """A value that comes from outside the stages (the checkpoint, the calibration set)."""
        self._values[name] = value
        self._keys[name] = key

    def add(self, stage: Stage) -> str:
        """Key ``stage`` and register it; returns the name of the value it writes."""
        missing = [r for r in stage.reads if r not in self._keys]
        if missing:
            raise ValueError(f"stage {stage.label} reads {missing}, which nothing before it writes")
        if stage.writes in self._keys:
            raise ValueError(f"two stages write '{stage.writes}'")
        versions = tool_versions()
        parts = {
            "stage": stage.name,
            "options": stage.options(),
            "inputs": {r: self._keys[r] for r in stage.reads},
            "tools": {k: v for k, v in versions.items() if k in stage.tools or k in ("edgec", "python")},
        }
        self._keys[stage.writes] = hash_key(parts)
        self._producer[stage.writes] = stage
        self.records[stage.writes] = StageRecord(stage.label, self._keys[stage.writes], stage.options())
        return stage.writes

    def producer(self, name: str) -> Stage:
        """The stage that writes the value ``name``."""
        return self._producer[name]

    def key(self, name: str) -> str:
        return self._keys[name]

    def value(self, name: str) -> Any:
        """The value named ``name``: already known, restored from the cache, or computed now."""
        if name in self._values:
            return self._values[name]
        ctx = self.ctx
        stage = self._producer[name]
        record = self.records[name]
        out_dir = ctx.work_dir / stage.label.replace("/", "_")
        if stage.cacheable:
            hit = ctx.cache.get(record.key)
            if hit is not None:
                files, result = hit
                shutil.copytree(files, out_dir, dirs_exist_ok=True)
                self._values[name] = stage.restore(result["value"], out_dir)
                record.cached = True
                record.summary = result.get("summary", {})
                ctx.report(f"[{stage.label}] reused from the build cache")
                return self._values[name]
        inputs = {r: self.value(r) for r in stage.reads}
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx.report(f"[{stage.label}] running")
        start = time.perf_counter()
        try:
            stage.requires(inputs, ctx)
            value = stage.run(inputs, out_dir, ctx)
        except (EdgecError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise StageError(stage.label, list(self._done), exc) from exc
        record.seconds = round(time.perf_counter() - start, 3)
        record.ran = True
        record.summary = stage.summary(value)
        self._done.append(stage.label)
        if stage.cacheable:
            ctx.cache.put(record.key, out_dir, {"value": stage.save(value, out_dir), "summary": record.summary})
        self._values[name] = value
        return value

    def run(self, names: list[str]) -> list[Any]:
        """Materialise the values in ``names``; earlier stages run only when something needs them."""
        return [self.value(name) for name in names]

    def stage_dir(self, name: str) -> Path:
        return self.ctx.work_dir / self._producer[name].label.replace("/", "_")
