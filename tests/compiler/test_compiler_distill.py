"""DistillStage on real data: the digits CNN, pruned to half its MACs, distilled back from the original."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed (pip install 'edgec[prune]')")

from edgec.calibration_data.readers import EvaluationSet  # noqa: E402
from edgec.compiler.cache import BuildCache  # noqa: E402
from edgec.compiler.context import BuildContext  # noqa: E402
from edgec.compiler.errors import ConfigError  # noqa: E402
from edgec.compiler.stages.distill import DistillOptions, DistillStage  # noqa: E402
from edgec.compiler.stages.load import _probe  # noqa: E402
from edgec.compiler.stages.prune import PruneStage  # noqa: E402
from edgec.compiler.types import (
    LoadedModel,  # noqa: E402
    TensorSpec,  # noqa: E402
)
from usererrors import raises_user_error  # noqa: E402

STUDENTS = '''
import torch
from torch import nn

def small():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

def wrong_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(digits_model, tmp_path_factory):
    model, data = digits_model
    tmp = tmp_path_factory.mktemp("distill")
    spec = _probe(tmp / "digits.pt", model, (TensorSpec("input", (1, 1, 8, 8), "float32", "NCHW"),))
    teacher = LoadedModel("torch", spec, tmp / "digits.pt", "pickled-module", module=model)
    out = tmp / "prune"
    out.mkdir()
    stage = PruneStage(macs=0.5)
    pruned = stage.run({"model": teacher}, out, _ctx(tmp))
    restored = stage.restore(stage.save(pruned, out), out)
    unlabeled = EvaluationSet([{"input": x[None]} for x in data["x_train"]], "digits-train")
    labeled = EvaluationSet(unlabeled.samples, "digits-train", labels=data["y_train"])
    return {"teacher": teacher, "pruned": pruned, "restored": restored, "data": data, "tmp": tmp,
            "unlabeled": unlabeled, "labeled": labeled}


def _ctx(tmp: Path) -> BuildContext:
    lines: list[str] = []
    ctx = BuildContext(work_dir=tmp, cache=BuildCache(tmp / "cache", enabled=False), report=lines.append)
    ctx.lines = lines  # type: ignore[attr-defined]
    return ctx


def _distill(setup, name: str, stage: DistillStage, pruned=None, data=None):
    out = setup["tmp"] / name
    out.mkdir()
    ctx = _ctx(setup["tmp"])
    inputs = {"model": setup["teacher"], "train_data": data or setup["unlabeled"]}
    if stage.student_source:
        inputs[stage.student_source] = pruned or setup["pruned"]
    stage.requires(inputs, ctx)
    return stage.run(inputs, out, ctx), ctx


def _agreement(a, b, x) -> float:
    with torch.no_grad():
        xa = torch.from_numpy(x)
        return float((a(xa).argmax(1) == b(xa).argmax(1)).float().mean() * 100)


def test_distillation_recovers_agreement_deterministically(setup):
    x_eval = setup["data"]["x_eval"]  # never seen by teacher or student
    teacher, pruned = setup["teacher"].module, setup["pruned"].module
    opts = DistillOptions(epochs=3, seed=1)
    first, ctx = _distill(setup, "run1", DistillStage(opts))
    # a restored (cached) pruned model is rebuilt into a trainable module: same result
    second, _ = _distill(setup, "run2", DistillStage(opts), pruned=setup["restored"])
    before = _agreement(pruned, teacher, x_eval)
    after = _agreement(first.module, teacher, x_eval)
    assert after > before + 5 and after >= 90, (before, after)
    for (k, a), b in zip(first.module.state_dict().items(), second.module.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs between two runs with the same seed"
    f = first.figures
    assert f["agreement_after"] > f["agreement_before"] and f["student_macs"] < 0.55 * f["teacher_macs"]
    assert f["hard_label_weight"] == 0.0 and f["seconds_per_epoch"] > 0 and 1 <= f["best_epoch"] <= 3
    assert any(line.startswith("[distill] epoch 1/3: loss") for line in ctx.lines)
    assert first.exported is not None and (setup["tmp"] / "run1" / "model.pt2").is_file()


def test_labels_and_feature_loss(setup):
    opts = DistillOptions(epochs=1, feature_layers=("block", "down"), seed=0)
    result, _ = _distill(setup, "features", DistillStage(opts, has_labels=True), data=setup["labeled"])
    assert result.figures["hard_label_weight"] == 0.5 and result.figures["accuracy_after"] is not None


def test_user_student(setup, tmp_path):
    (tmp_path / "students.py").write_text(STUDENTS)
    stage = DistillStage(DistillOptions(epochs=1), student_source=None, student=f"{tmp_path}/students.py:small")
    assert stage.reads == ("model", "train_data") and stage.options()["student_source_sha256"]
    result, _ = _distill(setup, "student", stage)
    assert result.figures["student_params"] < 200 and result.figures["student"].startswith("--student")


def test_student_with_other_output_shape_is_refused(setup, tmp_path):
    (tmp_path / "students.py").write_text(STUDENTS)
    stage = DistillStage(DistillOptions(epochs=1), student_source=None,
                         student=f"{tmp_path}/students.py:wrong_classes")
    with raises_user_error(ConfigError, r"--student .*wrong_classes have shapes \[\[1, 7\]\], the teacher's have \[\[1, 10\]\]"):
        _distill(setup, "wrong", stage)


def test_hard_labels_without_labels_are_refused(setup):
    with raises_user_error(ConfigError, r"hard-label loss \(weight 0.5\) needs labels.*\n.*--train-labels"):
        DistillStage(DistillOptions(hard_label_weight=0.5), has_labels=False)
    stage = DistillStage(DistillOptions(hard_label_weight=0.5), has_labels=True)
    with raises_user_error(ConfigError, "needs labels"):
        _distill(setup, "nolabels", stage)


@pytest.mark.parametrize("field, value, option", [
    ("epochs", 0, "--epochs"), ("lr", 0.0, "--lr"), ("temperature", -1.0, "--distill-temperature"),
    ("hard_label_weight", 1.5, "--hard-label-weight"),
])
def test_bad_options_are_refused(field, value, option):
    with raises_user_error(ConfigError, option):
        DistillStage(DistillOptions(**{field: value}), has_labels=True)
