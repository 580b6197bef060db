"""The build cache: a folder per stage output, keyed by a hash of everything that output depends on.

An entry is written in a temporary folder and renamed into place only once complete, so a build killed
half-way leaves at worst a stray temporary folder, never an entry a later build would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_RESULT = "result.json"


def default_cache_dir() -> Path:
    env = os.environ.get("EDGEC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgec"


def hash_key(parts: Any) -> str:
    """A stable hash of a JSON-serialisable structure."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class BuildCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry's folder and its recorded result, or None when absent or unusable."""
        if not self.enabled:
            return None
        entry = self._entry(key)
        try:
            result = json.loads((entry / _RESULT).read_text())
        except (OSError, ValueError):
            return None
        return entry / "files", result

    def put(self, key: str, files: Path, result: dict[str, Any]) -> None:
        """Store a copy of ``files`` (a folder) and ``result``. Silently skipped when disabled."""
        if not self.enabled:
            return
        final = self._entry(key)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=final.parent))
        try:
            shutil.copytree(files, tmp / "files")
            (tmp / _RESULT).write_text(json.dumps(result, indent=1, sort_keys=True))
            os.replace(tmp, final)
        except OSError:
            # Another build may have written the same entry first; either copy is valid.
            shutil.rmtree(tmp, ignore_errors=True)
