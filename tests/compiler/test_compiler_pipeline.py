"""The pipeline keys, caches and reuses stage outputs, and never trusts a half-written cache entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgec.compiler.cache import BuildCache
from edgec.compiler.context import BuildContext
from edgec.compiler.errors import StageError
from edgec.compiler.pipeline import Pipeline
from edgec.compiler.stage import Stage


class Double(Stage):
    name = "double"
    reads = ("number",)
    writes = "doubled"
    calls = 0

    def __init__(self, factor: int = 2):
        self.factor = factor

    def options(self):
        return {"factor": self.factor}

    def run(self, inputs, out_dir: Path, ctx):
        type(self).calls += 1
        (out_dir / "value.txt").write_text(str(inputs["number"] * self.factor))
        return out_dir / "value.txt"

    def save(self, value, out_dir):
        return {"file": value.name}

    def restore(self, result, files):
        return files / result["file"]


class Loader(Stage):
    name = "loader"
    reads = ("source",)
    writes = "number"
    cacheable = False
    calls = 0

    def run(self, inputs, out_dir, ctx):
        type(self).calls += 1
        return int(inputs["source"])


class Broken(Stage):
    name = "broken"
    reads = ("doubled",)
    writes = "never"

    def run(self, inputs, out_dir, ctx):
        raise ZeroDivisionError("a bug")


def _pipeline(tmp_path, cache, source="21", factor=2):
    ctx = BuildContext(work_dir=tmp_path / f"work-{factor}-{source}", cache=cache)
    p = Pipeline(ctx)
    p.seed("source", source, f"key-{source}")
    p.add(Loader())
    p.add(Double(factor))
    return p


def test_cache_hit_skips_the_stage_and_the_stages_before_it(tmp_path):
    cache = BuildCache(tmp_path / "cache")
    Double.calls = Loader.calls = 0
    first = _pipeline(tmp_path, cache).run(["doubled"])[0]
    assert first.read_text() == "42"
    assert (Double.calls, Loader.calls) == (1, 1)
    p = _pipeline(tmp_path, cache)
    second = p.run(["doubled"])[0]
    assert second.read_text() == "42"
    assert (Double.calls, Loader.calls) == (1, 1)
    assert p.records["doubled"].cached and not p.records["doubled"].ran


def test_options_and_inputs_change_the_key(tmp_path):
    cache = BuildCache(tmp_path / "cache")
    keys = {
        _pipeline(tmp_path, cache).key("doubled"),
        _pipeline(tmp_path, cache, factor=3).key("doubled"),
        _pipeline(tmp_path, cache, source="5").key("doubled"),
    }
    assert len(keys) == 3
    assert _pipeline(tmp_path, cache).key("doubled") in keys


def test_disabled_cache_always_runs(tmp_path):
    cache = BuildCache(tmp_path / "cache", enabled=False)
    Double.calls = 0
    _pipeline(tmp_path, cache).run(["doubled"])
    _pipeline(tmp_path, cache).run(["doubled"])
    assert Double.calls == 2
    assert not (tmp_path / "cache").exists()


def test_unexpected_exception_names_the_stage_and_those_before(tmp_path):
    p = _pipeline(tmp_path, BuildCache(tmp_path / "cache"))
    p.add(Broken())
    with pytest.raises(StageError, match=r"stage 'broken' failed \(stages before it: loader, double\)"):
        p.run(["never"])


def test_half_written_entry_is_never_trusted(tmp_path):
    cache = BuildCache(tmp_path / "cache")
    p = _pipeline(tmp_path, cache)
    key = p.key("doubled")
    # What a build killed inside put() leaves: a temporary folder beside the entry, never the entry itself.
    entry_parent = tmp_path / "cache" / key[:2]
    (entry_parent / f".{key[:12]}.tmp123" / "files").mkdir(parents=True)
    assert cache.get(key) is None
    # An entry folder without its result file (a copy cut short by hand) is not trusted either.
    (entry_parent / key / "files").mkdir(parents=True)
    assert cache.get(key) is None
    Double.calls = 0
    p.run(["doubled"])
    assert Double.calls == 1


def test_corrupt_result_file_is_a_miss(tmp_path):
    cache = BuildCache(tmp_path / "cache")
    _pipeline(tmp_path, cache).run(["doubled"])
    key = _pipeline(tmp_path, cache).key("doubled")
    (tmp_path / "cache" / key[:2] / key / "result.json").write_text("{truncated")
    assert cache.get(key) is None
    Double.calls = 0
    assert _pipeline(tmp_path, cache).run(["doubled"])[0].read_text() == "42"
    assert Double.calls == 1


def test_reading_a_value_nothing_writes_is_refused(tmp_path):
    p = Pipeline(BuildContext(work_dir=tmp_path, cache=BuildCache(enabled=False)))
    with pytest.raises(ValueError, match="reads"):
        p.add(Double())
