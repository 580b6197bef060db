"""edgec targets, inspect, recipes, help: through CliRunner and the console script."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

import zoo_models
from edgec.cli import cli


def test_help_needs_neither_torch_nor_onnx():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom edgec.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['build', '--help'])\nassert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_documents_exit_codes_and_env_vars():
    r = CliRunner().invoke(cli, ["--help"])
    assert "6 a benchmark gate failed" in r.output and "EDGEC_QUIET" in r.output
    r = CliRunner().invoke(cli, ["build", "--help"])
    assert "EDGEC_CACHE_DIR" in r.output


def test_targets_lists_profiles_and_availability(edgec_cli):
    r = edgec_cli("targets")
    assert r.returncode == 0, r.stderr
    for name in ("cpu", "x86-avx2", "x86-avx512", "onnxruntime", "reduce_range"):
        assert name in r.stdout
    data = json.loads(edgec_cli("targets", "--json").stdout)
    assert data["backends"]["onnxruntime"]["available"] is True
    assert {p["profile"] for p in data["profiles"]} >= {"cpu", "x86-avx2"}


def test_inspect_torch_checkpoint(tiny):
    r = CliRunner().invoke(cli, ["inspect", str(tiny / "tiny.pt2"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    # conv 1->4 3x3 (36 + 4) and fc 4->10 (40 + 10)
    assert info["parameters"] == 90
    # conv: 4x8x8 outputs x 9 MACs; fc: 10 x 4
    assert info["macs"] == 4 * 8 * 8 * 9 + 40
    assert info["ops"]["Conv"] == 1
    assert info["inputs"][0]["shape"] == [1, 1, 8, 8]


def test_inspect_onnx_with_dynamic_batch(tmp_path):
    path = tmp_path / "const.onnx"
    zoo_models.onnx_with_constant_weights(path)
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "x: batchx1x8x8 float32 NCHW" in r.output
    assert "parameters: 170" in r.output  # 72 + 8 + 80 + 10, kept in Constant nodes
    assert "Constant" in r.output
    assert "dynamic axes of x counted as 1" in r.output
    # --input fixes the dynamic batch: MACs scale with it
    macs = [int(line.split()[1].replace(",", "")) for line in r.output.splitlines() if line.startswith("MACs:")]
    r4 = CliRunner().invoke(cli, ["inspect", str(path), "--input", "x:4x1x8x8"])
    assert r4.exit_code == 0, r4.output
    assert "counted as 1" not in r4.output
    macs4 = [int(line.split()[1].replace(",", "")) for line in r4.output.splitlines() if line.startswith("MACs:")]
    assert macs[0] > 0 and macs4 == [4 * macs[0]]


def test_recipe_drives_the_build_and_flags_override(tmp_path, tiny):
    recipe = tmp_path / "edgec.yaml"
    recipe.write_text(
        f"checkpoint: {tiny / 'tiny.pt2'}\n"
        "target: cpu\n"
        "precision: [fp32, int8]\n"
        f"calib: {tiny / 'calib.npz'}\n"
        "calib_samples: 4\n"
        "calibration_method: percentile\n"
        "out: recipe-out\n"
        "target_options:\n  onnxruntime:\n    int8_activation: int8\n"
    )
    r = CliRunner().invoke(cli, ["build", "--config", str(recipe), "-p", "int8"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "recipe-out"  # relative to the recipe's folder
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["precision"] for a in manifest["artifacts"]] == ["int8"]  # the flag replaced the list
    assert manifest["calibration"]["samples"] == 4 and manifest["calibration"]["method"] == "percentile"
    assert manifest["artifacts"][0]["metadata"]["flavour"] == "S8S8"
    again = CliRunner().invoke(cli, ["build", "--config", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert second["artifacts"][0]["sha256"] == manifest["artifacts"][0]["sha256"]


def test_recipe_value_of_the_wrong_type(tmp_path, tiny):
    recipe = tmp_path / "edgec.yaml"
    recipe.write_text("calib_samples: many\n")
    r = CliRunner().invoke(cli, ["build", str(tiny / "tiny.pt2"), "--config", str(recipe), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "calib_samples" in r.output and "integer" in r.output


def test_version(edgec_cli):
    r = edgec_cli("--version")
    assert r.returncode == 0 and "edgec" in r.stdout


def test_inspect_counts_the_weights_inside_if_branches(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def branch(name, value):
        w = helper.make_tensor(f"w_{name}", TensorProto.FLOAT, [2, 3], [value] * 6)
        return helper.make_graph([helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [1, 3])], [w])

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 2.0))],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "branches.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "parameters: 12" in r.output  # 6 in each branch; the main graph holds none
