"""Pruning and distillation, measured side by side: ``python -m bench.prune [--quick] [--out FILE]``.

A ResNet-shaped CNN (three stages of two basic blocks, 32/64/128 channels, BatchNorm, residual sums, a linear
head, 105 M MACs) is trained on scikit-learn's digits upsampled from 8x8 to 32x32 (real offline data; at 8x8,
or with 16/32/64 channels, the net is so small that ONNX Runtime's per-call overhead and its INT8 kernels'
fixed costs decide the latency ratios). Then, through ``edgec.api.build``:

- the original model, FP32 and INT8 (target cpu);
- 50% of its MACs pruned (Taylor importance, ranked globally), channels rounded to multiples of 8, with and
  without distillation from the original (the KL + hard-label loss of ``edgec build --distill``), FP32 and INT8;
- 50% of MACs pruned without rounding (L1), to show that fewer MACs is not always faster;
- the peer baseline: the same pruned model fine-tuned with labels and no teacher, for the same epoch budget
  (same optimizer, schedule, held-out split and early stopping, on label accuracy).

Accuracy is top-1 of the ONNX files under ONNX Runtime on the 360 held-out digits; latency is ONNX Runtime on
one thread, batch 1, rows timed round-robin so a busy machine slows them alike. ``run(quick)`` returns the
Markdown section; the main benchmark suite includes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Cpu, cpu_seconds, int8_build, int8_kernels, others_busy, versions
from bench.section import Budget, Check, build_for_bench, checks_table, quiet
from edgec.benchmarks.report import MISSING, md_table

FACTORY = "bench.prune:resnet_digits"
SIZE = 32
WIDTHS = (32, 64, 128)
MACS_TO_REMOVE = 0.5
ROUND_TO = 8
CRITERION = "taylor"
# Global ranking: rounding to multiples of 8 makes each layer's width jump (32 -> 24 -> 16), and per-layer
# pruning then overshoots the MAC budget (64% instead of 50% here); ranked globally, layers cross those steps
# at different points and the budget is met closely.
GLOBAL = True
CALIB_SAMPLES = 200
SEED = 0

# The targets of the pruning issue.
MAX_ACCURACY_DROP = 1.0  # points of top-1, distilled vs original
MAX_FP32_RATIO = 0.6  # pruned FP32 latency / original FP32 latency
MAX_INT8_RATIO = 0.25  # pruned INT8 latency / original FP32 latency


@dataclasses.dataclass(frozen=True)
class Effort:
    """How long to train and to time."""

    teacher_epochs: int
    epochs: int  # distillation and fine-tuning, each
    timing: Budget


# Every row pools its calls over the rounds (20 untimed first, at least 50 timed, no cap).
FULL = Effort(teacher_epochs=6, epochs=6, timing=Budget(rounds=5, seconds=2.0, min_iterations=50,
                                                        max_iterations=None, warmup=20))
QUICK = Effort(teacher_epochs=3, epochs=2, timing=Budget(rounds=3, seconds=0.7, min_iterations=50,
                                                         max_iterations=None, warmup=20))


def resnet_digits() -> Any:
    """The benchmark's model: a small ResNet for 1x1x32x32 inputs and 10 classes (used as --model-factory)."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    class ResNetDigits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, WIDTHS[0], 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU())
            blocks, cin = [], WIDTHS[0]
            for i, width in enumerate(WIDTHS):
                blocks += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
                cin = width
            self.layers = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(cin, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    return ResNetDigits()


def digits32(seed: int = SEED) -> dict[str, np.ndarray]:
    """The digits split of ``edgec.calibration_data.samples``, upsampled bilinearly to 32x32."""
    import torch

    from edgec.calibration_data.samples import digits_split

    data = digits_split(seed)
    out = dict(data)
    for key in ("x_train", "x_calib", "x_eval"):
        x = torch.nn.functional.interpolate(torch.from_numpy(data[key]), size=SIZE, mode="bilinear", align_corners=False)
        out[key] = np.ascontiguousarray(x.numpy())
    return out


def _train(model: Any, x: Any, y: Any, epochs: int, lr: float, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def finetune(student: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = SEED) -> tuple[Any, float, int]:
    """The peer baseline: cross-entropy on labels, no teacher, with distillation's optimizer (Adam, lr 1e-3,
    per-step cosine), batch size, held-out split and early stopping (patience 3, on held-out label accuracy,
    best kept). Returns the student, seconds per epoch, and epochs run."""
    import torch

    from edgec.compiler.stages.distill import DistillOptions

    opts = DistillOptions(epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = min(len(x) - 2, max(2, int(round(opts.val_fraction * len(x)))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    train_idx = torch.from_numpy(train)
    opt = torch.optim.Adam(student.parameters(), lr=opts.lr)
    steps = max(1, len(train) // opts.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    gen = torch.Generator().manual_seed(seed)

    def accuracy() -> float:
        student.eval()
        with torch.no_grad():
            return float((student(xt[val]).argmax(1) == yt[val]).float().mean())

    best = (accuracy(), {k: v.clone() for k, v in student.state_dict().items()})
    stale, seconds, ran = 0, [], 0
    for _ in range(epochs):
        start = time.perf_counter()
        student.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(order), opts.batch_size):
            idx = order[i:i + opts.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(student(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
        acc = accuracy()
        seconds.append(time.perf_counter() - start)
        ran += 1
        if acc > best[0]:
            best, stale = (acc, {k: v.clone() for k, v in student.state_dict().items()}), 0
        else:
            stale += 1
            if stale >= opts.patience:
                break
    student.load_state_dict(best[1])
    return student.eval(), statistics.fmean(seconds), ran


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from edgec.compiler.onnxutil import ort_session

    session = ort_session(path)
    name = session.get_inputs()[0].name
    pred = [int(np.argmax(session.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))]
    return float((np.asarray(pred) == y).mean() * 100)


def _latencies(paths: dict[str, Path], feeds: list[np.ndarray], budget: Budget) -> dict[str, float]:
    """p50 latency (ms) of each ONNX file, one thread, timed round-robin in ``budget.rounds`` rounds (every
    call of a row pooled over the rounds)."""
    from edgec.benchmarks.harness import load_build, open_runner
    from edgec.benchmarks.latency import measure_latency

    runners = {}
    for name, path in paths.items():
        runner = open_runner(load_build(path)[0][0], threads=1)
        runner.load()
        runners[name] = runner
    pooled: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(budget.rounds):
            for name, runner in runners.items():
                in_name = runner.session.get_inputs()[0].name
                stats = measure_latency(runner, [{in_name: f} for f in feeds], warmup=budget.warmup,
                                        iterations=budget.max_iterations, duration=budget.seconds,
                                        min_iterations=budget.min_iterations)
                pooled[name].extend(stats.latencies_ms)
    finally:
        for runner in runners.values():
            runner.close()
    return {name: statistics.median(values) for name, values in pooled.items()}


def _cached_pruned(cache: Path, figures: dict[str, Any]) -> Any:
    """The pruned model the distilled build made, from this run's own build cache: the baseline fine-tunes
    exactly the model that was distilled."""
    import json

    from edgec.compiler.stages.prune import PruneStage

    summary = {k: v for k, v in figures.items() if k not in ("settings", "cached")}
    for result in sorted(cache.glob("*/*/result.json")):
        entry = json.loads(result.read_text())
        if entry.get("summary") == summary:
            return PruneStage(macs=MACS_TO_REMOVE).restore(entry["value"], result.parent / "files")
    raise RuntimeError("the pruned model of the distilled build is not in the bench's build cache")


def _artifact(out: Path, precision: str) -> Path:
    return out / "cpu" / f"model.{precision}.onnx"


#: Rows named in more than one place, and the rows that are timed.
UNROUNDED = "pruned, channels as found (no rounding; L1, not fine-tuned), FP32"
BASELINE = "pruned + fine-tuned with labels (peer baseline) FP32"
TIMED = ["original FP32", "original INT8", UNROUNDED, "pruned + distilled FP32", "pruned + distilled INT8"]


def run(quick: bool = False, work: Path | None = None, report: Any = None) -> str:
    """Train, prune, distill, build and measure; returns the Markdown section with PASS/FAIL per target."""
    import torch

    effort = QUICK if quick else FULL
    say = report or (lambda message: print(message, file=sys.stderr, flush=True))
    threads = torch.get_num_threads()
    # One thread: small-batch training is not faster on two, and on a busy machine OpenMP threads spin.
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="edgec-bench-prune-") if work is None else None
    folder = Path(tmp.name) if tmp is not None else Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started, load_start = time.perf_counter(), cpu_seconds()
        cpu = Cpu.read()
        data = digits32()
        teacher_seconds = _train_teacher(folder, data, effort, say)
        m_orig, m_dist, m_odd = _builds(folder, effort, say)
        ft_onnx, ft_seconds, ft_epochs = _peer_baseline(folder, data, effort, m_dist["prune"], say)

        rows = {
            "original FP32": _artifact(folder / "original", "fp32"),
            "original INT8": _artifact(folder / "original", "int8"),
            UNROUNDED: _artifact(folder / "pruned-unrounded", "fp32"),
            "pruned FP32, not fine-tuned": _artifact(folder / "pruned", "fp32"),
            BASELINE: ft_onnx,
            "pruned + distilled FP32": _artifact(folder / "distilled", "fp32"),
            "pruned + distilled INT8": _artifact(folder / "distilled", "int8"),
        }
        acc, lat, figures = _measure(rows, data, effort.timing, say)
        base = lat["original FP32"]
        checks = _checks(effort, acc, lat, m_dist["prune"])
        total = time.perf_counter() - started
        machine = (f"{cpu.arch}, {cpu.cores} cores ({int8_kernels(cpu, int8_build(m_orig))}); other processes: "
                   f"{others_busy(load_start, cpu_seconds(), total, cpu.cores)}")
        return _markdown(quick, effort, rows, acc, lat, figures, base, checks, m_dist["distill"], m_dist["prune"],
                         m_odd["prune"], lat[UNROUNDED] / base, teacher_seconds, ft_seconds, ft_epochs, total,
                         machine)
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()


def _train_teacher(folder: Path, data: dict[str, np.ndarray], effort: Effort, say: Any) -> float:
    """Train the original model and write its checkpoint and the data files the builds read; seconds per epoch."""
    import torch

    say(f"[bench-prune] training the teacher ({effort.teacher_epochs} epochs)")
    t0 = time.perf_counter()
    teacher = _train(resnet_digits(), torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                     effort.teacher_epochs, 2e-3, SEED)
    teacher_seconds = (time.perf_counter() - t0) / effort.teacher_epochs
    torch.save(teacher.state_dict(), folder / "resnet_digits.pt")
    np.savez(folder / "train.npz", input=data["x_train"])
    np.save(folder / "train_labels.npy", data["y_train"])
    np.savez(folder / "calib.npz", input=data["x_train"][:CALIB_SAMPLES])
    return teacher_seconds


def _common(folder: Path) -> dict[str, Any]:
    """The recipe fields every build of the section shares."""
    return dict(checkpoint=str(folder / "resnet_digits.pt"), model_factory=FACTORY,
                inputs=[f"input:1x1x{SIZE}x{SIZE}"], target=["cpu"], seed=SEED)


def _builds(folder: Path, effort: Effort, say: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The edgec builds (original, distilled, pruned, pruned-unrounded); the manifests of the first, second, last."""
    from edgec.recipe import Recipe

    common = _common(folder)
    train = dict(train_data=str(folder / "train.npz"), train_labels=str(folder / "train_labels.npy"))
    prune = dict(prune_macs=MACS_TO_REMOVE, prune_criterion=CRITERION, prune_global=GLOBAL)

    def built(name: str, **kw: Any) -> dict[str, Any]:
        say(f"[bench-prune] edgec build: {name}")
        with quiet():
            result, _ = build_for_bench(Recipe(**common, out=str(folder / name), **kw), cache_dir=folder / "cache",
                                        report=say)
        return result.manifest

    int8 = dict(precision=["fp32", "int8"], calib=str(folder / "calib.npz"))
    m_orig = built("original", **int8)
    m_dist = built("distilled", **int8, **prune, **train, prune_round_to=ROUND_TO, distill=True,
                   epochs=effort.epochs)
    built("pruned", **prune, **train, prune_round_to=ROUND_TO)
    # Only its latency matters, so the cheap criterion: Taylor would cost a gradient pass per step.
    m_odd = built("pruned-unrounded", prune_macs=MACS_TO_REMOVE, prune_criterion="l1", prune_global=GLOBAL)
    return m_orig, m_dist, m_odd


def _peer_baseline(folder: Path, data: dict[str, np.ndarray], effort: Effort, prune_figures: dict[str, Any],
                   say: Any) -> tuple[Path, float, int]:
    """Fine-tune the distilled build's pruned model with labels and export it: the ONNX file, seconds per epoch,
    epochs run."""
    from edgec.compiler.cache import BuildCache
    from edgec.compiler.context import BuildContext
    from edgec.compiler.stages.export import ExportStage
    from edgec.compiler.stages.load import load_checkpoint
    from edgec.compiler.stages.prune import rebuild_pruned
    from edgec.compiler.types import LoadedModel, TensorSpec

    say(f"[bench-prune] peer baseline: fine-tuning with labels, {effort.epochs} epochs")
    common = _common(folder)
    ckpt = Path(common["checkpoint"])
    loaded = load_checkpoint(ckpt, (TensorSpec.parse(common["inputs"][0]),), FACTORY)
    student = rebuild_pruned(loaded.module, _cached_pruned(folder / "cache", prune_figures))
    student, ft_seconds, ft_epochs = finetune(student, data["x_train"], data["y_train"], effort.epochs)
    ctx = BuildContext(work_dir=folder, cache=BuildCache(enabled=False))
    (folder / "baseline-onnx").mkdir(exist_ok=True)
    with quiet():
        ft_onnx = ExportStage().run(
            {"model": LoadedModel("torch", loaded.spec, ckpt, "fine-tuned", module=student)},
            folder / "baseline-onnx", ctx,
        ).path
    return ft_onnx, ft_seconds, ft_epochs


def _measure(rows: dict[str, Path], data: dict[str, np.ndarray], budget: Budget, say: Any
             ) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[int, int]]]:
    """Top-1 of every row, latency of the timed rows, and (params, MACs) of every row."""
    import onnx

    from edgec.compiler.onnxutil import mac_count, parameter_count

    x_eval, y_eval = data["x_eval"], data["y_eval"]
    say("[bench-prune] accuracy on the 360 held-out digits (ONNX Runtime)")
    acc = {name: _onnx_accuracy(path, x_eval, y_eval) for name, path in rows.items()}
    say(f"[bench-prune] latency: {budget.rounds} rounds x {budget.seconds}s per row, one thread")
    feeds = [x_eval[i:i + 1] for i in range(16)]
    lat = _latencies({n: rows[n] for n in TIMED}, feeds, budget)
    figures = {}
    for name, path in rows.items():
        # An INT8 file holds its weights as integers: count them on its FP32 sibling.
        model = onnx.load(str(path).replace(".int8.onnx", ".fp32.onnx"))
        figures[name] = (parameter_count(model), mac_count(model))
    return acc, lat, figures


def _checks(effort: Effort, acc: dict[str, float], lat: dict[str, float], prune_fig: dict[str, Any]) -> list[Check]:
    """The targets of the pruning issue, each with what was measured."""
    base = lat["original FP32"]
    fp32_ratio = lat["pruned + distilled FP32"] / base
    int8_ratio = lat["pruned + distilled INT8"] / base
    drop = acc["original FP32"] - acc["pruned + distilled FP32"]
    return [
        Check(f"MACs removed >= {MACS_TO_REMOVE:.0%}", f"{prune_fig['macs_removed']:.1%}",
              prune_fig["macs_removed"] >= MACS_TO_REMOVE),
        Check(f"top-1 after distillation within {MAX_ACCURACY_DROP:g} point of the original",
              f"{acc['pruned + distilled FP32']:.2f}% vs {acc['original FP32']:.2f}% ({-drop:+.2f})",
              drop <= MAX_ACCURACY_DROP),
        Check(f"pruned FP32 latency <= {MAX_FP32_RATIO}x original FP32", f"{fp32_ratio:.2f}x",
              fp32_ratio <= MAX_FP32_RATIO),
        Check(f"pruned + INT8 latency <= {MAX_INT8_RATIO}x original FP32", f"{int8_ratio:.2f}x",
              int8_ratio <= MAX_INT8_RATIO),
        Check(f"distillation recovers at least as well as fine-tuning with labels ({effort.epochs} epochs each)",
              f"{acc['pruned + distilled FP32']:.2f}% vs {acc[BASELINE]:.2f}%",
              acc["pruned + distilled FP32"] >= acc[BASELINE]),
    ]


COLUMNS = ("model", "params", "MACs", "top-1 %", "p50 ms", "latency vs original FP32")


def _rows(rows: dict[str, Path], figures: dict[str, tuple[int, int]], acc: dict[str, float],
          lat: dict[str, float], base: float) -> list[list[str]]:
    body = []
    for name in rows:
        params, macs = figures[name]
        ms = lat.get(name)
        timed = [f"{ms:.3f}", f"{ms / base:.2f}x"] if ms is not None else [MISSING, MISSING]
        body.append([name, f"{params:,}", f"{macs / 1e6:.2f} M", f"{acc[name]:.2f}", *timed])
    return body


def _markdown(quick, effort, rows, acc, lat, figures, base, checks, distill, prune_fig, odd_fig, odd_ratio,
              teacher_seconds, ft_seconds, ft_epochs, total, machine) -> str:
    """The section; ``machine``: the CPU, cores, INT8 kernels (from the original build's manifest) and load,
    as this run read them."""
    budget = effort.timing
    v = versions(("torch", "torch-pruning", "onnxruntime", "edgec"))
    lines = [
        "## Structured pruning and distillation",
        "",
        f"ResNet-shaped CNN (3 stages x 2 basic blocks, {'/'.join(map(str, WIDTHS))} channels, BatchNorm, residual "
        f"sums, linear head) trained {effort.teacher_epochs} epochs on scikit-learn's digits upsampled to "
        f"{SIZE}x{SIZE} (1437 training / 360 held-out images). `edgec build --prune-macs {MACS_TO_REMOVE} "
        f"--prune-criterion {CRITERION} {'--prune-global ' if GLOBAL else ''}--prune-round-to {ROUND_TO} --distill "
        "--train-data ... --train-labels ... "
        f"--epochs {effort.epochs}` (KL at T=4 + hard labels at 0.5, Adam 1e-3 cosine, early stopping on held-out "
        "agreement with the teacher). Peer baseline: the same pruned model fine-tuned with labels only, same "
        "epochs, optimizer, schedule, split and early stopping (on label accuracy).",
        "",
        f"Accuracy: top-1 of the ONNX files under ONNX Runtime on the 360 held-out digits. Latency: ONNX Runtime "
        f"{v.get('onnxruntime')}, CPUExecutionProvider, 1 thread, batch 1, p50 of {budget.rounds} round-robin "
        f"rounds of {budget.seconds:g}s per row. Machine: {machine}. torch "
        f"{v.get('torch')}, torch-pruning {v.get('torch-pruning')}; training on 1 torch thread."
        + (" Quick mode: shorter training and timing." if quick else ""),
        "",
        md_table(COLUMNS, _rows(rows, figures, acc, lat, base), numeric_from=1),
        "",
        f"Pruning: MACs {prune_fig['macs_before']:,} -> {prune_fig['macs_after']:,} "
        f"({prune_fig['macs_removed']:.1%} fewer), params {prune_fig['params_before']:,} -> "
        f"{prune_fig['params_after']:,}, in {prune_fig['steps']} steps; protected: "
        f"{', '.join(prune_fig['protected']) or 'none'}"
        + (f"; skipped: {'; '.join(prune_fig['skipped'])}" if prune_fig["skipped"] else "; nothing skipped")
        + ".",
        f"Distillation: {distill['epochs_run']} epochs run, best kept from epoch {distill['best_epoch']}, held-out "
        f"agreement with the teacher {distill['agreement_before']:.2f}% -> {distill['agreement_after']:.2f}%; "
        f"**{distill['seconds_per_epoch']:.2f} s per epoch** ({distill['train_samples']} samples, 1 thread). "
        f"Fine-tuning baseline: {ft_epochs} epochs run, {ft_seconds:.2f} s per epoch. Teacher training: "
        f"{teacher_seconds:.2f} s per epoch.",
    ]
    mac_ratio = odd_fig["macs_after"] / odd_fig["macs_before"]
    odd = [f"{n} {after}" for n, (before, after) in odd_fig.get("channels", {}).items() if after % 8][:3]
    if odd_ratio > mac_ratio * 1.15:
        lines.append(
            f"Fewer MACs is not always faster: pruned without rounding ({odd_fig['macs_removed']:.0%} fewer MACs, "
            f"channel counts such as {', '.join(odd) or 'n/a'}) runs at {odd_ratio:.2f}x the original, against the "
            f"{mac_ratio:.2f}x its MACs suggest: ONNX Runtime's blocked convolution kernels want channel counts in "
            f"multiples of 8. Hence `--prune-round-to {ROUND_TO}`."
        )
    else:
        lines.append(f"Pruned without rounding: {odd_ratio:.2f}x the original latency for {mac_ratio:.2f}x the MACs.")
    lines += ["", checks_table(checks)]
    lines += ["", f"Whole section: {total:.0f} s (`python -m bench.prune{' --quick' if quick else ''}`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prune", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter training and timing")
    parser.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    parser.add_argument("--work", type=Path, help="keep the models and builds in this folder")
    args = parser.parse_args(argv)
    text = run(args.quick, work=args.work)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
