"""edgec build --prune/--prune-macs/--distill: the pruned, distilled model flows into the targets; bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed (pip install 'edgec[prune]')")

from click.testing import CliRunner  # noqa: E402

from edgec.cli import cli  # noqa: E402

FACTORY = "edgec.demo:digits_cnn"
INPUT = "input:1x1x8x8"

BROKEN = '''
import torch
from torch import nn

class Numpy(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy())

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bridge = Numpy()
        self.head = nn.Linear(8, 10)
    def forward(self, x):
        return self.head(self.bridge(self.conv(x)).mean((2, 3)))

def net():
    return Net()

def wrong_student():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(digits_model, tmp_path_factory):
    model, data = digits_model
    d = tmp_path_factory.mktemp("prune-cli")
    torch.save(model.state_dict(), d / "digits.pt")
    np.savez(d / "train.npz", input=data["x_train"])
    np.save(d / "train_labels.npy", data["y_train"])
    np.savez(d / "calib.npz", input=data["x_train"][:50])
    (d / "broken.py").write_text(BROKEN)
    spec = importlib.util.spec_from_file_location("_broken_for_test", d / "broken.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.net().state_dict(), d / "broken.pt")
    return d


def _build(assets, out, *extra, cache=None):
    args = ["build", assets / "digits.pt", "--model-factory", FACTORY, "--input", INPUT, "--out", out, *extra]
    env = {"EDGEC_CACHE_DIR": str(cache)} if cache else {}
    return CliRunner().invoke(cli, list(map(str, args)), env=env)


def _distill_args(assets, epochs="2"):
    return ["--prune-macs", "0.5", "--distill", "--train-data", assets / "train.npz",
            "--train-labels", assets / "train_labels.npy", "--epochs", epochs]


def _stages(out):
    return {s["stage"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}


def test_pruned_distilled_build_and_cache_reuse(assets, tmp_path, edgec_cli):
    import onnx

    from edgec.compiler.onnxutil import mac_count, ort_session

    cache = tmp_path / "cache"
    out = tmp_path / "first"
    # the installed console script, as a user runs it
    r = edgec_cli("build", assets / "digits.pt", "--model-factory", FACTORY, "--input", INPUT, "--out", out,
                  *_distill_args(assets), "-p", "fp32", "-p", "int8", "--calib", assets / "calib.npz",
                  env={"EDGEC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "[prune] taylor: MACs 378,176 -> " in r.stderr and "[distill] epoch 2/2" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    prune, distill = manifest["prune"], manifest["distill"]
    assert prune["settings"]["macs"] == 0.5 and prune["criterion"] == "taylor" and prune["macs_removed"] >= 0.5
    assert prune["params_after"] < prune["params_before"] and prune["protected_outputs"] == ["head"]
    assert distill["settings"]["epochs"] == 2 and distill["hard_label_weight"] == 0.5
    assert distill["agreement_after"] > distill["agreement_before"]
    assert manifest["export"]["source_format"] == "distilled" and manifest["export"]["max_abs_diff"] < 1e-4
    fp32 = out / "cpu" / "model.fp32.onnx"
    assert mac_count(onnx.load(str(fp32))) <= 0.5 * prune["macs_before"] * 1.05
    x = np.load(assets / "train.npz")["input"][:1]
    assert ort_session(fp32).run(None, {"input": x})[0].shape == (1, 10)
    assert (out / "cpu" / "model.int8.onnx").is_file()

    # Repeatable across processes: another process, with no cache, trains the same student byte for byte.
    other = tmp_path / "other-process"
    r = edgec_cli("build", assets / "digits.pt", "--model-factory", FACTORY, "--input", INPUT, "--out", other,
                  *_distill_args(assets), "-p", "fp32", "--no-cache", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert (other / "cpu" / "model.fp32.onnx").read_bytes() == fp32.read_bytes()
    assert json.loads((other / "manifest.json").read_text())["distill"]["agreement_after"] == distill["agreement_after"]

    # Another opset re-exports: the distilled student comes from the cache, nothing is retrained.
    again = tmp_path / "again"
    result = _build(assets, again, *_distill_args(assets), "--opset", "19", cache=cache)
    assert result.exit_code == 0, result.output
    stages = _stages(again)
    assert stages["distill"]["cached"] and not stages["distill"]["ran"]
    assert not stages["prune"]["ran"] and stages["export"]["ran"]
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["distill"]["agreement_after"] == distill["agreement_after"]

    # A distillation option changes its key: distill again, from the cached pruned model.
    third = tmp_path / "third"
    result = _build(assets, third, *_distill_args(assets, epochs="1"), cache=cache)
    assert result.exit_code == 0, result.output
    stages = _stages(third)
    assert stages["distill"]["ran"] and stages["prune"]["cached"] and not stages["prune"]["ran"]


def test_prune_only_with_protect(assets, tmp_path):
    out = tmp_path / "out"
    result = _build(assets, out, "--prune", "0.5", "--protect", "stem.*", "--prune-global")
    assert result.exit_code == 0, result.output
    prune = json.loads((out / "manifest.json").read_text())["prune"]
    assert "stem.0" in prune["protected"] and prune["criterion"] == "l1" and prune["settings"]["global"]
    recipe = (out / "recipe.yaml").read_text()
    assert "prune: 0.5" in recipe and "- stem.*" in recipe


def _assert_error(result, code, *needles):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "error: " in result.output
    for needle in needles:
        assert needle in result.output, f"{needle!r} not in {result.output!r}"


@pytest.mark.parametrize("args, needles", [
    (["--prune", "1.5"], ["--prune 1.5", "between 0 and 1"]),
    (["--prune-macs", "0"], ["--prune-macs 0.0", "between 0 and 1"]),
    (["--prune", "0.5", "--prune-macs", "0.5"], ["exclude each other"]),
    (["--protect", "head"], ["--protect applies only to pruning"]),
    (["--prune", "0.5", "--distill"], ["--distill needs training data", "--train-data"]),
    (["--distill"], ["--distill needs a student"]),
    (["--prune", "0.5", "--prune-criterion", "taylor"], ["taylor needs data"]),
])
def test_bad_options(assets, tmp_path, args, needles):
    result = _build(assets, tmp_path / "out", *args)
    _assert_error(result, 2, *needles)
    assert not (tmp_path / "out").exists()


def test_protect_pattern_matching_nothing(assets, tmp_path):
    result = _build(assets, tmp_path / "out", "--prune", "0.5", "--protect", "backbone.*")
    _assert_error(result, 2, "--protect 'backbone.*' matches no module", "stem")


def test_hard_label_loss_without_labels(assets, tmp_path):
    result = _build(assets, tmp_path / "out", "--prune", "0.5", "--distill", "--train-data", assets / "train.npz",
                    "--hard-label-weight", "0.5")
    _assert_error(result, 2, "hard-label loss", "--train-labels")


def test_student_with_wrong_output_shape(assets, tmp_path):
    result = _build(assets, tmp_path / "out", "--distill", "--student", f"{assets}/broken.py:wrong_student",
                    "--train-data", assets / "train.npz", "--epochs", "1")
    _assert_error(result, 2, "wrong_student have shapes [[1, 3]], the teacher's have [[1, 10]]")


def test_untraceable_model_names_the_module(assets, tmp_path):
    args = ["build", assets / "broken.pt", "--model-factory", f"{assets}/broken.py:net", "--input", "input:1x1x8x8",
            "--prune", "0.5", "--out", tmp_path / "out"]
    result = CliRunner().invoke(cli, list(map(str, args)))
    _assert_error(result, 4, "torch-pruning cannot trace module 'bridge' (Numpy)")


def test_onnx_checkpoint_is_refused(assets, tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["input"])
    for extra in (["--prune", "0.5"], ["--distill", "--student", f"{assets}/broken.py:net", "--train-data",
                                       str(assets / "train.npz")]):
        result = CliRunner().invoke(cli, ["build", str(path), "--out", str(tmp_path / "out"), *extra])
        _assert_error(result, 2, "needs a PyTorch model", "m.onnx")


def test_exported_program_without_factory(assets, tmp_path, digits_assets):
    result = CliRunner().invoke(cli, ["build", str(digits_assets["checkpoint"]), "--prune", "0.5",
                                      "--out", str(tmp_path / "out")])
    _assert_error(result, 2, "pruning needs the model's Python code", "--model-factory")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_not_installed(assets, tmp_path):
    result = _build(assets, tmp_path / "out", *_distill_args(assets), "--tensorboard", tmp_path / "tb")
    _assert_error(result, 5, "tensorboard", "pip install tensorboard")


def test_recipe_keys_and_relative_paths(assets, tmp_path):
    recipe = tmp_path / "edgec.yaml"
    (tmp_path / "train.npz").write_bytes((assets / "train.npz").read_bytes())
    recipe.write_text(
        f"checkpoint: {assets / 'digits.pt'}\nmodel_factory: {FACTORY}\ninputs: {INPUT}\n"
        "prune: 0.25\nprune_criterion: taylor\nprune_round_to: 4\nprotect: stem.*\ntrain_data: train.npz\n"
    )
    result = CliRunner().invoke(cli, ["build", "--config", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["prune"]["settings"]["round_to"] == 4 and manifest["prune"]["criterion"] == "taylor"
    assert manifest["train_data"]["source"] == str(tmp_path / "train.npz")
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("prune: 0.25", "prune: lots"))
    result = CliRunner().invoke(cli, ["build", "--config", str(bad), "--out", str(tmp_path / "out2")])
    _assert_error(result, 2, "recipe key 'prune' must be a number")


@pytest.mark.slow
def test_face_cascade_pruned_and_distilled_keeps_its_accuracy(tmp_path):
    """The trained CascadeRNet (PReLU, permute before flatten, Softmax head beside a box head; a digits
    classifier here): half the MACs gone, and after distillation within 1 point of the original's accuracy on
    held-out samples that neither the original nor the distillation saw."""
    import zoo
    from edgec.compiler.onnxutil import ort_session

    model, data = zoo.trained_cascade_rnet()
    torch.save(model.state_dict(), tmp_path / "rnet.pt")
    np.savez(tmp_path / "train.npz", input=data["train_x"])
    np.save(tmp_path / "train_labels.npy", data["train_y"])
    out = tmp_path / "out"
    args = ["build", tmp_path / "rnet.pt", "--model-factory", "zoo:cascade_rnet_factory", "--input", "input:1x3x24x24",
            "--prune-macs", "0.5", "--distill", "--train-data", tmp_path / "train.npz",
            "--train-labels", tmp_path / "train_labels.npy", "--epochs", "10", "-p", "fp32", "--out", out]
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prune"]["criterion"] == "taylor" and manifest["prune"]["macs_removed"] >= 0.5
    assert manifest["prune"]["protected_outputs"] == ["dense5_2", "dense5_1"]

    with torch.no_grad():
        original = model(torch.from_numpy(data["held_x"]))[1].argmax(1).numpy()
    session = ort_session(out / "cpu" / "model.fp32.onnx")
    distilled = np.array([session.run(None, {"input": x[None]})[1].argmax(1)[0] for x in data["held_x"]])
    before = float((original == data["held_y"]).mean() * 100)
    after = float((distilled == data["held_y"]).mean() * 100)
    assert before > 95 and after >= before - 1.0, (before, after)
