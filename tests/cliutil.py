"""Running the installed `edgec` console script, as a user would (shared by tests in several folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_edgec(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the installed console script, as a user would."""
    exe = Path(sys.executable).with_name("edgec")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout
    )
