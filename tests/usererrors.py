"""pytest.raises for EdgecError that matches the message and the hint together (what the CLI prints)."""

from __future__ import annotations

import contextlib
import re


@contextlib.contextmanager
def raises_user_error(cls, pattern: str):
    import pytest

    with pytest.raises(cls) as info:
        yield info
    text = f"{info.value.message}\n{info.value.hint or ''}"
    assert re.search(pattern, text), f"{pattern!r} not in: {text}"
