from __future__ import annotations

import dataclasses

import pytest

from edgec.compiler.errors import ConfigError
from edgec.compiler.types import Precision
from edgec.targets.base import parse_options
from edgec.targets.onnxruntime.target import OnnxRuntimeOptions
from edgec.targets.registry import availability, backends, profiles, resolve_target, target_class


def test_profiles_name_known_backends():
    found = profiles()
    assert {"cpu", "x86-avx2", "x86-avx512"} <= set(found)
    for p in found.values():
        assert p.backend in backends()
        assert p.precisions


def test_resolve_by_name_alias_and_backend():
    assert resolve_target("cpu").backend == "onnxruntime"
    assert resolve_target("x86").name == "cpu"
    assert resolve_target("onnxruntime").precisions == frozenset(Precision)


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        resolve_target("jetsun")
    assert "cpu" in info.value.hint and "x86-avx512" in info.value.hint


def test_backend_class_and_availability():
    cls = target_class("onnxruntime")
    assert cls.name == "onnxruntime"
    assert availability("onnxruntime") == (True, "")


def test_options_are_validated():
    assert parse_options(OnnxRuntimeOptions, {"per_channel": False}, "x").per_channel is False
    with pytest.raises(ConfigError, match="unknown option 'perchannel'"):
        parse_options(OnnxRuntimeOptions, {"perchannel": False}, "x")
    with pytest.raises(ConfigError, match="int8_activation"):
        parse_options(OnnxRuntimeOptions, {"int8_activation": "int4"}, "x")
    with pytest.raises(ConfigError, match="true or false"):
        parse_options(OnnxRuntimeOptions, {"per_channel": "yes"}, "x")


def test_every_option_is_described():
    for f in dataclasses.fields(OnnxRuntimeOptions):
        assert f.metadata.get("help"), f.name
