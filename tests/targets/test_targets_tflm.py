"""The tflm (mcu) target with the real tools: tflite-micro's interpreter, ethos-u-vela, arm-none-eabi-gcc.

The trained digits CNN is built once through the installed `edgec` for the `mcu` alias (cortex-m4) and the
Ethos-U55-128 profile, then benched; the other tests read that build folder. The refusals build small models
from tflm_models.py; each model is converted once.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import tflm_models
import torch
from click.testing import CliRunner

from cliutil import run_edgec
from edgec.cli import cli
from edgec.compiler.errors import ConfigError, QuantizationError, TargetBuildError
from edgec.compiler.stages.load import load_checkpoint
from edgec.compiler.types import ArrayCalibrationSet, Artifact, InputSpec, Precision, TensorSpec
from edgec.targets.litert import TFLiteIO, convert, feeds_to_tflite, read_ops
from edgec.targets.registry import profiles, resolve_target
from edgec.targets.tflm import arena, firmware, ops, vela
from edgec.targets.tflm.boards import board
from edgec.targets.tflm.target import TFLMOptions, TFLMTarget, fixed_spec

PROFILES = ("cortex-m4", "cortex-m7", "cortex-m55", "cortex-m55-ethos-u55-128", "ethos-u55-256", "ethos-u65")
U55 = "cortex-m55-ethos-u55-128"
needs_gcc = pytest.mark.skipif(not firmware.compiler_available(), reason="arm-none-eabi-g++ is not installed "
                               "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")


def _calib(shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayCalibrationSet([{"x": rng.random(shape, dtype=np.float32)} for _ in range(n)])


def _loaded(tmp_path, cls):
    """A model from tflm_models as the pipeline loads it (an ExportedProgram checkpoint)."""
    model = tflm_models.build(cls)
    path = tmp_path / f"{cls.__name__}.pt2"
    torch.export.save(torch.export.export(model, cls.example_inputs), str(path))
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def built(digits_assets, tmp_path_factory):
    """`edgec build` of the digits CNN for `mcu` (cortex-m4) and the Ethos-U55-128 profile, then its manifest."""
    out = tmp_path_factory.mktemp("tflm-build") / "out"
    r = run_edgec("build", digits_assets["checkpoint"], "--target", "mcu", "--target", U55, "-p", "int8",
                  "--calib", digits_assets["calib"], "--out", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["metadata"]["profile"]: Artifact.from_dict(a, root=out) for a in manifest["artifacts"]}
    return out, arts


# --- the op resolver table ----------------------------------------------------------------------------------


def test_resolver_table_uses_real_tflm_and_schema_names():
    schema_ops = set(ops.builtin_names().values())
    assert set(ops.BUILTIN_ADD) <= schema_ops, set(ops.BUILTIN_ADD) - schema_ops
    used = set(ops.BUILTIN_ADD.values()) | set(ops.CUSTOM_ADD.values())
    assert used <= ops.RESOLVER_METHODS, used - ops.RESOLVER_METHODS
    assert ops.RESOLVER_METHODS <= used, "a method of the header has no op mapped to it"
    assert len(set(ops.BUILTIN_ADD.values())) == len(ops.BUILTIN_ADD)  # one op, one method
    for op, method in {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
                       "FULLY_CONNECTED": "AddFullyConnected", "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax",
                       "AVERAGE_POOL_2D": "AddAveragePool2D", "UNIDIRECTIONAL_SEQUENCE_LSTM":
                       "AddUnidirectionalSequenceLSTM", "ethos-u": "AddEthosU"}.items():
        assert ops.resolver_method(op) == method
    assert ops.resolver_method("STABLEHLO_ADD") is None
    with pytest.raises(TargetBuildError, match="STABLEHLO_ADD"):
        firmware.resolver_calls(["CONV_2D", "STABLEHLO_ADD"])


# --- profiles and options -----------------------------------------------------------------------------------


def test_profiles_carry_core_memory_and_npu():
    table = profiles()
    for name in PROFILES:
        p = table[name]
        assert p.backend == "tflm" and p.precisions == frozenset({Precision.INT8}), name
        b = board(p.options["board"])
        assert b.name == name and b.flash_bytes > 0 and b.ram_bytes > 0 and b.source
        assert f"-mcpu={b.cpu}" in b.gcc_flags() and "-mthumb" in b.gcc_flags()
        assert bool(b.npu) == ("ethos" in name)
    assert resolve_target("mcu").name == "cortex-m4"
    assert [board(n).npu for n in PROFILES[3:]] == ["ethos-u55-128", "ethos-u55-256", "ethos-u65-256"]
    with pytest.raises(ConfigError, match="not an mcu profile"):
        board("jetson-orin-nano")


def test_every_option_is_described():
    import dataclasses

    for f in dataclasses.fields(TFLMOptions):
        assert f.metadata.get("help"), f.name


def test_dynamic_batch_is_fixed_other_dynamic_axes_refused():
    spec = InputSpec((TensorSpec("x", ("N", 1, 8, 8), "float32", "NCHW"),), (TensorSpec("y", ("N", 10)),))
    fixed = fixed_spec(spec, "m.pt2")
    assert fixed.inputs[0].shape == (1, 1, 8, 8) and fixed.outputs[0].shape == (1, 10)
    with pytest.raises(ConfigError, match="dynamic axis 2") as info:
        fixed_spec(InputSpec((TensorSpec("x", (1, 1, "H", 8)),)), "m.pt2")
    assert "--input x:1x1xSIZEx8" in info.value.hint


# --- the digits CNN, built and benched through the installed edgec ------------------------------------------


def test_build_and_bench_end_to_end(built, digits_assets, tmp_path):
    out, arts = built
    assert set(arts) == {"cortex-m4", U55}
    for folder in ("cortex-m4", U55):
        assert sorted(p.name for p in (out / folder / "firmware").iterdir()) == sorted(firmware.FILES)
    assert (out / U55 / "model.int8.vela.tflite").is_file()
    assert not (out / "cortex-m4" / "model.int8.vela.tflite").exists()
    report = tmp_path / "bench.json"
    r = run_edgec("bench", out, "--data", digits_assets["eval"], "--labels", digits_assets["eval_labels"],
                  "--iterations", "10", "--warmup", "2", "--json", report)
    assert r.returncode == 0, r.stderr
    runs = {run["name"]: run for run in json.loads(report.read_text())["runs"]}
    assert set(runs) == {"cortex-m4/int8", f"{U55}/int8"}
    for run in runs.values():
        assert run["runtime"].startswith("tflite-micro ")
        acc = run["accuracy"]
        assert acc["reference"].startswith("torch")  # no FP32 artifact: the checkpoint is the reference
        assert acc["agreement"] >= 99.0, acc
        assert acc["accuracy_drop"] <= 1.0, acc


def test_recorded_arena_runs_and_a_smaller_one_fails(built):
    _, arts = built
    art = arts["cortex-m4"]
    rec = art.metadata["arena"]
    model = art.path.read_bytes()
    minimum, recorded = rec["minimum_bytes"], rec["recorded_bytes"]
    assert recorded == arena.align(int(np.ceil(minimum * 1.10))) and recorded % 16 == 0
    assert art.metadata["firmware"]["arena_bytes"] == recorded
    assert arena.runs(model, recorded)[0]
    assert arena.runs(model, minimum)[0]
    ok, log = arena.runs(model, minimum - 1)
    assert not ok and "allocate" in log.lower()
    assert not arena.runs(model, int(minimum * 0.9))[0]
    # TFLM's own accounting agrees with the bisection (up to the arena's start alignment).
    assert abs(arena.allocations(model, recorded)["total"] - minimum) <= 16


def test_tflm_matches_litert_within_one_lsb(built, digits_assets):
    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro import runtime

    _, arts = built
    art = arts["cortex-m4"]
    ins = [TFLiteIO.from_dict(d) for d in art.metadata["io"]["inputs"]]
    with np.load(digits_assets["eval"]) as data:
        x = next(iter(data.values()))
    lite = Interpreter(model_path=str(art.path), num_threads=1)
    lite.allocate_tensors()
    (li,), (lo,) = lite.get_input_details(), lite.get_output_details()
    micro = runtime.Interpreter.from_file(str(art.path), arena_size=art.metadata["arena"]["recorded_bytes"])
    a, b = [], []
    for row in x:
        (q,) = feeds_to_tflite(ins, {"x": row[None]})
        lite.set_tensor(li["index"], q)
        lite.invoke()
        a.append(lite.get_tensor(lo["index"]).copy())
        micro.set_input(q, 0)
        micro.invoke()
        b.append(np.array(micro.get_output(0)))
    a, b = np.concatenate(a).astype(int), np.concatenate(b).astype(int)
    assert a.dtype == b.dtype and a.shape == b.shape == (len(x), 10)
    assert np.abs(a - b).max() <= 1
    # Top-1 agrees except on ties: where LiteRT's two best logits are within 1 LSB, 1 LSB may flip the argmax
    # (measured: 359/360 agree; the other has LiteRT logits 20 and 20, TFLM 20 and 21).
    top2 = np.sort(a, axis=1)[:, -2:]
    differ = a.argmax(1) != b.argmax(1)
    assert not (differ & (top2[:, 1] - top2[:, 0] > 1)).any()
    assert (~differ).mean() >= 0.99


@needs_gcc
@pytest.mark.parametrize("core", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_firmware_compiles_for_each_core(built, core, tmp_path):
    out, arts = built
    art = arts["cortex-m4"]
    folder = out / "cortex-m4" / "firmware"
    model = art.path.read_bytes()
    # model_data.cc holds exactly the model; model_settings.h its arena and quantization.
    text = (folder / firmware.MODEL_DATA_CC).read_text()
    body = text[text.index("{") + 1:text.index("};")]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == model
    assert "alignas(16) const unsigned char g_model[]" in text and f"g_model_len = {len(model)};" in text
    settings = (folder / firmware.SETTINGS_H).read_text()
    assert f"kTensorArenaSize = {art.metadata['arena']['recorded_bytes']};" in settings
    (x,) = art.metadata["io"]["inputs"]
    assert f"kInput0ZeroPoint = {x['zero_point']};" in settings and "kInput0Shape[4] = {1, 8, 8, 1};" in settings
    # The sources compile for the core, and the object's flash size is the model's.
    b = board(core)
    sizes = firmware.compile_sizes(folder, b, firmware.Settings(
        core, "model.int8.tflite", "", 16, "", art.metadata["io"]["inputs"], art.metadata["io"]["outputs"], []))
    assert f"-mcpu={core}" in sizes["flags"]
    assert len(model) <= sizes["flash_bytes"] <= len(model) + 64, sizes
    print(f"{core}: model_data.o text {sizes['objects']['model_data']['text']} B (model {len(model)} B)")
    # g_model is 16-byte aligned in the object file.
    obj = tmp_path / "model_data.o"
    subprocess.run([firmware.CXX, *firmware.CXXFLAGS, *b.gcc_flags(), "-c", str(folder / firmware.MODEL_DATA_CC),
                    "-o", str(obj)], check=True)
    headers = subprocess.run(["arm-none-eabi-objdump", "-h", str(obj)], capture_output=True, text=True).stdout
    assert re.search(r"\.rodata\.g_model\s.*\n.*\s2\*\*4", headers) or re.search(r"g_model.*2\*\*4", headers), headers
    if core == "cortex-m4":
        assert art.metadata["firmware"]["compile"]["flash_bytes"] == sizes["flash_bytes"]


def test_op_resolver_registers_exactly_the_models_ops(built):
    out, arts = built
    for profile, model_file in (("cortex-m4", "model.int8.tflite"), (U55, "model.int8.vela.tflite")):
        header = (out / profile / "firmware" / firmware.RESOLVER_H).read_text()
        calls = re.findall(r"resolver\.(Add\w+)\(\)", header)
        model_ops = ops.unique_ops(ops.model_ops(out / profile / model_file))
        assert calls == [ops.resolver_method(op) for op in model_ops]
        assert set(calls) <= ops.RESOLVER_METHODS and len(calls) == len(set(calls))
        # The shared reader (LiteRT's schema) sees the same ops.
        assert {op.removeprefix("CUSTOM:") for op in read_ops(out / profile / model_file)} == set(model_ops)
        assert "MicroMutableOpResolver<kOpCount>" in header and f"kOpCount = {len(calls)};" in header
    assert {"AddConv2D", "AddFullyConnected"} <= set(arts["cortex-m4"].metadata["firmware"]["resolver"])
    assert arts[U55].metadata["firmware"]["resolver"] == ["AddEthosU"]


def test_ethos_u55_puts_every_op_on_the_npu(built):
    out, arts = built
    meta = arts[U55].metadata
    v = meta["vela"]
    assert v["accelerator"] == "Ethos_U55_128" and v["system_config"] and v["memory_mode"] == "Shared_Sram"
    assert v["npu_ops"] >= 5 and v["cpu_ops"] == 0 and v["cpu_op_names"] == []
    assert v["cycles_total"] > 0 and v["inference_time_s"] > 0 and v["sram_bytes"] > 0
    assert v["off_chip_flash_bytes"] > 0
    vela_model = out / U55 / v["file"]
    assert ops.model_ops(vela_model) == ["ethos-u"]
    text = (out / U55 / "firmware" / firmware.MODEL_DATA_CC).read_text()
    assert f"g_model_len = {vela_model.stat().st_size};" in text
    npu = meta["npu_arena"]
    assert npu["offline_extent_bytes"] >= v["sram_bytes"] > 0
    assert meta["firmware"]["arena_bytes"] == npu["recorded_bytes"] > npu["estimate_bytes"]
    assert meta["memory"]["model_bytes"] == vela_model.stat().st_size <= meta["board"]["flash_bytes"]
    readme = (out / U55 / "firmware" / firmware.README).read_text()
    assert "AddEthosU" in readme and "CO_PROCESSOR=ethos_u" in readme and str(v["cycles_total"]) in readme
    print(f"vela {v['accelerator']}: {v['npu_ops']} NPU / {v['cpu_ops']} CPU ops, {v['cycles_total']} cycles, "
          f"{v['inference_time_ms']} ms, SRAM {v['sram_bytes']} B, flash {v['off_chip_flash_bytes']} B; "
          f"arena cpu {meta['arena']} npu {npu}")


@pytest.mark.parametrize("profile", ["ethos-u55-256", "ethos-u65"])
def test_other_ethos_u_configurations(built, profile, tmp_path):
    """The same INT8 model through vela with the other profiles' accelerator, system config and memory mode."""
    _, arts = built
    b = board(profile)
    rep = vela.compile_model(arts[U55].path, tmp_path, b.npu, b.vela_system_config, b.vela_memory_mode)
    vela.judge(rep, "digits", allow_cpu_fallback=False)
    assert rep.accelerator.lower().replace("_", "-") == b.npu and rep.memory_mode == b.vela_memory_mode
    assert rep.cpu_ops == 0 and rep.cycles_total > 0 and rep.inference_time_s > 0
    u55_128 = arts[U55].metadata["vela"]
    assert rep.cycles_npu < u55_128["cycles_npu"]  # twice the MACs per cycle
    print(f"vela {rep.accelerator}: {rep.npu_ops} NPU ops, {rep.cycles_total} cycles, "
          f"{rep.inference_time_s * 1e3:.4f} ms, SRAM {rep.sram_bytes} B, DRAM {rep.dram_bytes} B")


# --- vela's verdicts ----------------------------------------------------------------------------------------


def test_fp32_model_through_vela_is_a_failure(tiny, tmp_path, one_torch_thread):
    loaded = load_checkpoint(tiny / "tiny.pt2")
    fp32 = convert(loaded.module, loaded.spec, Precision.FP32, tmp_path / "fp32.tflite")
    report = vela.compile_model(fp32.path, tmp_path / "vela", "ethos-u55-128")  # vela itself exits 0
    assert report.npu_ops == 0 and report.cpu_ops > 0
    with pytest.raises(TargetBuildError, match="placed none of the .* NPU") as info:
        vela.judge(report, "tiny.pt2", allow_cpu_fallback=True)
    assert "int8" in info.value.hint.lower()


def test_cpu_fallback_fails_unless_allowed(tmp_path, one_torch_thread):
    loaded = _loaded(tmp_path, tflm_models.WidePool)
    calib = _calib((1, 1, 300, 1))
    with pytest.raises(TargetBuildError, match=r"left 1 of \d+ ops .* on the CPU \(MAX_POOL_2D\)") as info:
        TFLMTarget(TFLMOptions(board=U55)).build(loaded, Precision.INT8, calib, tmp_path / "strict")
    assert "allow_cpu_fallback" in info.value.hint
    allowed = TFLMTarget(TFLMOptions(board=U55, allow_cpu_fallback=True))
    (art,) = allowed.build(loaded, Precision.INT8, calib, tmp_path / "allowed")
    v = art.metadata["vela"]
    assert v["cpu_op_names"] == ["MAX_POOL_2D"] and v["npu_ops"] > 0
    assert art.metadata["firmware"]["resolver"] == ["AddEthosU", "AddMaxPool2D"]


# --- activations and the face cascade: single int8 ops, registered, run by TFLM, placed on the NPU ------------

#: Ops of tflm_models.Activations that litert-torch's quantizer left float (PReLU as RELU/MUL/SUB, Softmax) or
#: quantized with a neighbour's scale (a Tanh through a concat with a Sigmoid lost its negative half).
ACTIVATION_OPS = ("PRELU", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "MUL", "CONCATENATION", "PAD",
                  "RESIZE_NEAREST_NEIGHBOR", "MEAN", "SOFTMAX")
#: The only output quantization (scale, zero point) the int8 kernels of LiteRT and TFLM take.
FIXED_OUTPUT = {"LOGISTIC": (1 / 256, -128), "SOFTMAX": (1 / 256, -128), "TANH": (1 / 128, 0)}
NPU = "ethos-u55-256"


def _op_tensors(path):
    """(op name, input tensor details, output tensor details) per op, in order, as LiteRT reads them."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # No XNNPack: it would replace the ops it runs with one DELEGATE node.
    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    return [(op["op_name"], [tensors[i] for i in op["inputs"] if i >= 0], [tensors[i] for i in op["outputs"]])
            for op in interp._get_ops_details()]


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def activations(tmp_path_factory, one_torch_thread):
    """tflm_models.Activations built for cortex-m4 (default options), and 16 samples with torch's outputs."""
    tmp = tmp_path_factory.mktemp("activations")
    loaded = _loaded(tmp, tflm_models.Activations)
    (art,) = TFLMTarget().build(loaded, Precision.INT8, _calib((1, 3, 16, 16), 16), tmp / "out")
    x = np.random.default_rng(1).random((16, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        ref = tflm_models.build(tflm_models.Activations)(torch.from_numpy(x)).numpy()
    return art, x, ref


def test_activations_are_single_int8_ops_the_resolver_registers(activations):
    art, _, _ = activations
    used = ops.model_ops(art.path)
    assert set(ACTIVATION_OPS) <= set(used), used
    assert used.count("PRELU") == 1 and used.count("SOFTMAX") == 1  # one op each, not a decomposition
    assert not {"DEQUANTIZE", "RELU", "SUB"} & set(used) and ops.float_ops(art.path) == []
    for name, inputs, outputs in _op_tensors(art.path):
        assert inputs[0]["dtype"] == np.int8 and all(t["dtype"] == np.int8 for t in outputs), name
        if name in FIXED_OUTPUT:
            scale, zero_point = outputs[0]["quantization"]
            assert (scale, zero_point) == pytest.approx(FIXED_OUTPUT[name]), name
        if name == "PRELU":  # per-channel slopes, one int8 scale for them all (TFLM's PRELU takes one)
            slopes = inputs[1]
            assert slopes["dtype"] == np.int8 and tuple(slopes["shape"]) == (1, 1, 8)
            assert len(slopes["quantization_parameters"]["scales"]) == 1
    header = (art.path.parent / firmware.FOLDER / firmware.RESOLVER_H).read_text()
    for op in ACTIVATION_OPS:
        method = ops.resolver_method(op)
        assert method in art.metadata["firmware"]["resolver"] and f"resolver.{method}()" in header, op


def test_activations_run_in_tflm_like_torch(activations):
    art, x, ref = activations
    assert art.metadata["arena"]["minimum_bytes"] > 0
    with TFLMTarget().open(art) as runner:
        got = runner.infer({"x": x})["output"]
    assert got.shape == ref.shape == (16, 4)
    assert _cosine(got, ref) > 0.999 and np.abs(got - ref).max() < 0.02, (_cosine(got, ref), np.abs(got - ref).max())


def test_activations_run_on_the_ethos_u_npu(activations, tmp_path):
    art, _, _ = activations
    b = board(NPU)
    rep = vela.compile_model(art.path, tmp_path, b.npu, b.vela_system_config, b.vela_memory_mode)
    vela.judge(rep, "activations", allow_cpu_fallback=False)
    assert rep.cpu_ops == 0 and rep.cpu_op_names == [] and ops.model_ops(rep.optimised) == ["ethos-u"]


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, one_torch_thread):
    """The zoo's face cascade, RNet (trained on digits) and PNet (fully convolutional), built through the
    installed edgec with default flags for `mcu` (cortex-m4) and ethos-u55-256."""
    import zoo

    root = tmp_path_factory.mktemp("cascade")
    built = {}
    for name, make in (("rnet", zoo.make_cascade), ("pnet", zoo.make_pnet)):
        (root / name).mkdir()
        case = make(root / name)
        out = root / f"{name}-out"
        r = run_edgec("build", case.checkpoint, *case.args, "--target", "mcu", "--target", NPU,
                      "--calib", case.calib, "--out", out)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        built[name] = case, {a["metadata"]["profile"]: Artifact.from_dict(a, root=out) for a in manifest["artifacts"]}
    return built


@pytest.mark.parametrize("name, used, prelus", [
    ("rnet", {"CONV_2D", "PRELU", "MAX_POOL_2D", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}, 4),
    ("pnet", {"CONV_2D", "PRELU", "MAX_POOL_2D", "SOFTMAX"}, 3),
])
def test_cascade_is_full_integer_on_the_cpu_and_the_npu(cascade, name, used, prelus):
    """litert-torch's quantizer left each PReLU as DEQUANTIZE, RELU, MUL, MUL, SUB, QUANTIZE and the Softmax
    float: every mcu profile refused the cascade."""
    _, arts = cascade[name]
    cpu, npu = arts["cortex-m4"], arts[NPU]
    model_ops = ops.model_ops(cpu.path)
    assert set(model_ops) == used and model_ops.count("PRELU") == prelus and model_ops.count("SOFTMAX") == 1
    assert ops.float_ops(cpu.path) == []
    assert cpu.metadata["firmware"]["resolver"] == [ops.resolver_method(op) for op in ops.unique_ops(model_ops)]
    assert cpu.metadata["arena"]["minimum_bytes"] > 0
    v = npu.metadata["vela"]
    assert v["npu_ops"] > 0 and v["cpu_ops"] == 0 and v["cpu_op_names"] == []
    assert npu.metadata["firmware"]["resolver"] == ["AddEthosU"]
    for art in (cpu, npu):
        folder = art.path.parent / firmware.FOLDER
        assert sorted(p.name for p in folder.iterdir()) == sorted(firmware.FILES)
    assert "| ops left to TFLM on the CPU (vela) | none |" in (npu.path.parent / firmware.FOLDER / firmware.README).read_text()


@pytest.mark.parametrize("name", ["rnet", "pnet"])
def test_cascade_int8_agrees_with_torch(cascade, name):
    from edgec.compiler.modelio import torch_run

    case, arts = cascade[name]
    loaded = load_checkpoint(case.checkpoint)
    (x_name,), names = loaded.spec.input_names, [t.name for t in loaded.spec.outputs]
    if case.eval_data:
        with np.load(case.eval_data) as data:
            x = data["x"]
    else:
        x = np.random.default_rng(1).random((32, 3, 32, 32), dtype=np.float32)
    rows = [torch_run(loaded.module, {x_name: row[None]}, [x_name]) for row in x]  # the export's batch is 1
    ref = [np.concatenate(outs) for outs in zip(*rows)]
    with TFLMTarget().open(arts["cortex-m4"]) as runner:
        got = runner.infer({x_name: x})
    for n, r in zip(names, ref):
        assert _cosine(got[n], r) > 0.999, (n, _cosine(got[n], r))
    if case.labels:  # RNet: the class probabilities
        labels = np.load(case.labels)
        q, f = got[names[1]].argmax(1), ref[1].argmax(1)
        assert (q == f).mean() >= 0.99
        assert ((f == labels).mean() - (q == labels).mean()) * 100 <= 1.0


# --- refusals -----------------------------------------------------------------------------------------------


def test_arena_over_the_profiles_ram_fails_with_both_sizes(tmp_path, one_torch_thread):
    loaded = _loaded(tmp_path, tflm_models.WideActivations)
    with pytest.raises(TargetBuildError) as info:
        TFLMTarget(TFLMOptions(board="cortex-m4")).build(loaded, Precision.INT8, _calib((1, 1, 128, 128), 4),
                                                        tmp_path / "out")
    msg = info.value.message
    arena_bytes = int(re.search(r"arena of .* takes (\d+) bytes", msg).group(1))
    assert arena_bytes > 262144 and "262144 bytes" in msg and "RAM" in msg and "cortex-m4" in msg


def test_float_ops_are_refused(tmp_path, one_torch_thread):
    loaded = _loaded(tmp_path, tflm_models.FloatCumsum)
    with pytest.raises(QuantizationError, match="still computes in float .*CUMSUM"):
        TFLMTarget().build(loaded, Precision.INT8, _calib((1, 8)), tmp_path / "out")


def _cli(args, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*map(str, args), "--out", str(out)])
    return result, out


def _assert_user_error(result, out, code, *needles):
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: " in text and "hint: " in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cli_refuses_float_precisions(tiny, tmp_path, precision):
    result, out = _cli(["build", tiny / "tiny.pt2", "-t", "mcu", "-p", precision, "--calib", tiny / "calib.npz"],
                       tmp_path)
    _assert_user_error(result, out, 2, f"does not support {precision}", "int8")


def test_cli_int8_without_calibration(tiny, tmp_path):
    result, out = _cli(["build", tiny / "tiny.pt2", "-t", U55, "-p", "int8"], tmp_path)
    _assert_user_error(result, out, 3, "INT8 needs calibration data", "--calib")


def test_cli_onnx_checkpoint_is_refused(tiny, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    result, out = _cli(["build", path, "-t", "mcu", "-p", "int8", "--calib", tiny / "calib.npz"], tmp_path)
    _assert_user_error(result, out, 2, "model.onnx", "ONNX", "PyTorch checkpoint")


def test_cli_dynamic_non_batch_axis_is_refused(tiny, tmp_path):
    import zoo_models

    ckpt = tmp_path / "weights.pt"
    torch.save(zoo_models.tiny_cnn().state_dict(), ckpt)
    result, out = _cli(["build", ckpt, "--model-factory", "zoo_models:tiny_cnn", "--input", "x:1x1xHx8",
                        "-t", "mcu", "-p", "int8", "--calib", tiny / "calib.npz"], tmp_path)
    _assert_user_error(result, out, 2, "dynamic axis 2 ('H')", "--input x:1x1xSIZEx8")


def test_cli_model_over_the_flash_fails_with_both_sizes(tmp_path, one_torch_thread):
    model = tflm_models.build(tflm_models.BigLinear)
    ckpt = tmp_path / "big.pt2"
    torch.export.save(torch.export.export(model, tflm_models.BigLinear.example_inputs), str(ckpt))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((4, 1024), dtype=np.float32))
    result, out = _cli(["build", ckpt, "-t", "mcu", "-p", "int8", "--calib", tmp_path / "calib.npz"], tmp_path)
    _assert_user_error(result, out, 4, "flash", "1048576 bytes", "cortex-m4")
    size = int(re.search(r"takes (\d+) bytes", result.output).group(1))
    assert size > 1048576


def test_runner_needs_the_recorded_arena(built):
    """The runner builds TFLM with the recorded arena: a manifest whose arena is too small fails loudly."""
    _, arts = built
    art = arts["cortex-m4"]
    broken = Artifact(art.path, art.format, art.precision, art.target, art.spec, art.sha256,
                      {**art.metadata, "arena": {**art.metadata["arena"], "recorded_bytes": 512}})
    with pytest.raises(TargetBuildError, match="recorded arena of 512 bytes"):
        with TFLMTarget().open(broken):
            pass
    with TFLMTarget().open(art) as runner:
        x = np.zeros((3, 1, 8, 8), np.float32)  # three rows run one at a time
        assert runner.infer({"x": x})["output"].shape == (3, 10)


def test_finish_folder_checks_vela_reproduces_the_build(built, tmp_path):
    out, arts = built
    art = arts[U55]
    folder = tmp_path / U55
    folder.mkdir()
    shutil.copy(art.path, folder / art.path.name)
    copy = Artifact(folder / art.path.name, art.format, art.precision, art.target, art.spec, art.sha256,
                    art.metadata)
    written = TFLMTarget(TFLMOptions(board=U55)).finish_folder(folder, [copy])
    assert {p.name for p in written} == {"model.int8.vela.tflite", *firmware.FILES}
    for name in firmware.FILES:
        assert (folder / "firmware" / name).read_text() == (out / U55 / "firmware" / name).read_text()


def test_compile_check_is_skipped_and_said_so_without_the_compiler(built, tmp_path, monkeypatch):
    _, arts = built
    art = arts["cortex-m4"]
    settings = firmware.Settings("cortex-m4", art.path.name, art.sha256, 7552, "note", art.metadata["io"]["inputs"],
                                 art.metadata["io"]["outputs"], ops.model_ops(art.path))
    monkeypatch.setattr(firmware, "compiler_available", lambda: False)
    result = TFLMTarget()._compile(tmp_path / "fw", art.path.read_bytes(), settings)
    assert "arm-none-eabi-g++ is not on PATH" in result["skipped"]
    assert sorted(p.name for p in (tmp_path / "fw").iterdir()) == sorted(firmware.FILES)
