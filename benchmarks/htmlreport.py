"""``edgec report``: saved benchmark results as one self-contained HTML page and a Markdown file.

The page needs no network and no script: plots are inline SVG drawn here (latency distribution per artifact,
accuracy drop against latency and against size with the Pareto front marked, and per output the figures of its
task: reliability diagram, precision-recall curve, cosine and IoU histograms, nearest-neighbour agreement, edit
distances), tables are plain HTML. Several results files (a host run and a device run, say) are merged, each run
labelled with where it ran. Where the runs carry the build's records (``RunResult.build``), a section lists each
artifact's build-time verdict, the layers its fallback kept in higher precision and its latency against FP32.
"""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path
from typing import Any

from edgec.benchmarks.report import format_size, markdown_table, md_table, num_cell, verdict
from edgec.benchmarks.results import BenchResults, RunResult
from edgec.compiler.errors import InputFileError

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")


@dataclasses.dataclass
class Point:
    """One run as plotted: its label, p50 latency, size and accuracy drop (points)."""

    label: str
    latency_ms: float
    size_bytes: int
    drop: float | None
    color: str


def load_results(paths: list[Path]) -> list[tuple[str, BenchResults]]:
    """(source label, results) per file; the label tells runs from different files apart."""
    if not paths:
        raise InputFileError("no results files given", hint="pass one or more JSON files written by edgec bench --json")
    loaded = [(Path(p), BenchResults.from_json(p)) for p in paths]
    stems = [p.stem for p, _ in loaded]
    out = []
    for (path, results), stem in zip(loaded, stems):
        label = stem if stems.count(stem) == 1 else str(path)
        out.append((label, results))
    return out


def _run_label(run: RunResult, source: str, many: bool) -> str:
    return f"{run.name} [{source}]" if many else run.name


def _runs(sources: list[tuple[str, BenchResults]]) -> list[tuple[str, RunResult]]:
    many = len(sources) > 1
    return [(_run_label(run, source, many), run) for source, results in sources for run in results.runs]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


# ---------------------------------------------------------------------------------------------------------------
# SVG plots.


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step) + 2) if start + k * step <= hi + 1e-12]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def latency_plot(runs: list[tuple[str, RunResult]], colors: dict[str, str]) -> str:
    """Horizontal box plots (p25-p75 box, p50 line, whiskers min-p99) with every timed call as a dot."""
    width, row_h, left, right, top = 860, 34, 230, 30, 30
    height = top + row_h * len(runs) + 40
    values = [v for _, r in runs for v in (r.latency.latencies_ms or [r.latency.p50_ms])]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or hi * 0.05 or 1.0
    lo, hi = max(0.0, lo - pad), hi + pad

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (width - left - right)

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'role="img" aria-label="latency distribution per artifact">']
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 8}" x2="{x(t):.1f}" y2="{height - 34}" class="grid"/>'
                     f'<text x="{x(t):.1f}" y="{height - 18}" class="tick" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 2}" text-anchor="middle" class="axis">'
                 'latency per call (ms)</text>')
    for i, (label, run) in enumerate(runs):
        cy = top + row_h * i + row_h / 2
        lat = run.latency
        data = sorted(lat.latencies_ms) or [lat.p50_ms]
        q1, q3 = data[len(data) // 4], data[(3 * len(data)) // 4]
        color = colors[label]
        parts.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end" class="label">{html.escape(label)}</text>')
        parts.append(f'<line x1="{x(lat.min_ms):.1f}" y1="{cy:.1f}" x2="{x(lat.p99_ms):.1f}" y2="{cy:.1f}" '
                     f'stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<rect x="{x(q1):.1f}" y="{cy - 9:.1f}" width="{max(1.0, x(q3) - x(q1)):.1f}" height="18" '
                     f'fill="{color}" fill-opacity="0.25" stroke="{color}"/>')
        parts.append(f'<line x1="{x(lat.p50_ms):.1f}" y1="{cy - 11:.1f}" x2="{x(lat.p50_ms):.1f}" '
                     f'y2="{cy + 11:.1f}" stroke="{color}" stroke-width="3"><title>{html.escape(label)}: p50 '
                     f'{lat.p50_ms:.3f} ms, p90 {lat.p90_ms:.3f}, p99 {lat.p99_ms:.3f}</title></line>')
        step = max(1, len(data) // 200)
        for k, v in enumerate(lat.latencies_ms[::step]):
            jitter = ((k * 7919) % 13 - 6) * 0.9
            parts.append(f'<circle cx="{x(v):.1f}" cy="{cy + jitter:.1f}" r="1.4" fill="{color}" fill-opacity="0.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_plot(points: list[Point], xkey: str, xlabel: str, log_x: bool = False) -> str:
    """Accuracy drop against ``xkey`` (latency or size); the Pareto front joined by a dashed line."""
    usable = [p for p in points if p.drop is not None]
    width, height, left, right, top, bottom = 860, 380, 70, 30, 20, 50
    if not usable:
        return '<p class="note">No accuracy figures in these results (no reference), so no accuracy plot.</p>'
    xs = [getattr(p, xkey) for p in usable]
    ys = [p.drop for p in usable]
    tx = (lambda v: math.log10(max(v, 1e-9))) if log_x else (lambda v: float(v))
    x_lo, x_hi = min(map(tx, xs)), max(map(tx, xs))
    x_pad = (x_hi - x_lo) * 0.08 or 0.5
    y_lo, y_hi = min(0.0, min(ys)), max(ys)
    y_pad = (y_hi - y_lo) * 0.1 or 0.5
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def px(v: float) -> float:
        return left + (tx(v) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="accuracy drop against {html.escape(xlabel)}">']
    for t in _ticks(y_lo, y_hi):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in _ticks(x_lo, x_hi):
        v = 10 ** t if log_x else t
        parts.append(f'<text x="{left + (t - x_lo) / (x_hi - x_lo) * (width - left - right):.1f}" '
                     f'y="{height - bottom + 18}" text-anchor="middle" class="tick">'
                     f'{format_size(int(v)) if xkey == "size_bytes" else _fmt(v)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
                 f'{html.escape(xlabel)}</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">accuracy drop (points)</text>')
    front = pareto_front([(tx(getattr(p, xkey)), p.drop) for p in usable])
    if len(front) > 1:
        path = " ".join(f"{px(getattr(usable[i], xkey)):.1f},{py(usable[i].drop):.1f}" for i in front)
        parts.append(f'<polyline points="{path}" class="front"/>')
    for i, p in enumerate(usable):
        on_front = i in front
        cx, cy = px(getattr(p, xkey)), py(p.drop)
        tip = (f"{p.label}: drop {p.drop:.2f} pts, p50 {p.latency_ms:.3f} ms, {format_size(p.size_bytes)}"
               + (" (Pareto front)" if on_front else ""))
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{7 if on_front else 5}" fill="{p.color}" '
                     f'stroke="{"#000" if on_front else "none"}" stroke-width="1.5"><title>{html.escape(tip)}</title>'
                     f'</circle><text x="{cx + 9:.1f}" y="{cy - 7:.1f}" class="pt">{html.escape(p.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Task figures: every one is drawn by xy_plot, from the plot data benchmarks.metrics records per output.

REFERENCE_COLOR = "#9a9a9a"


@dataclasses.dataclass
class Series:
    """What a plot draws: ``bars`` over bins (``x`` the bin edges, ``y`` a height per bin; None draws nothing for
    that bin) or a ``line`` through the points (``x``, ``y``)."""

    label: str
    color: str
    kind: str
    x: list[float]
    y: list[float | None]
    dashed: bool = False


def xy_plot(series: list[Series], xlabel: str, ylabel: str, x_range: tuple[float, float],
            y_range: tuple[float, float] | None = None, notes: list[str] | tuple[str, ...] = (),
            x_ticks: list[tuple[float, str]] | None = None) -> str:
    """A small plot: the bar series side by side within each bin, lines over them, a legend and ``notes`` above."""
    legend = [s for s in series if s.label]
    width, height, left, right, bottom = 420, 290, 56, 14, 42
    top = 10 + 15 * (len(legend) + len(notes))
    x_lo, x_hi = x_range
    if y_range is None:
        ys = [v for s in series for v in s.y if v is not None]
        y_range = (0.0, max(ys) * 1.1 if ys and max(ys) > 0 else 1.0)
    y_lo, y_hi = y_range

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    parts = [f'<svg class="plot task" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(ylabel)} against {html.escape(xlabel)}">']
    for t in _ticks(y_lo, y_hi, 4):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 5}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t, text in x_ticks or [(t, _fmt(t)) for t in _ticks(x_lo, x_hi, 5)]:
        parts.append(f'<text x="{px(t):.1f}" y="{height - bottom + 15}" text-anchor="middle" class="tick">'
                     f'{html.escape(text)}</text>')
    parts.append(f'<line x1="{left}" y1="{py(y_lo):.1f}" x2="{width - right}" y2="{py(y_lo):.1f}" stroke="#999"/>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
                 f'{html.escape(xlabel)}</text><text x="13" y="{(top + height - bottom) / 2}" text-anchor="middle" '
                 f'class="axis" transform="rotate(-90 13 {(top + height - bottom) / 2})">{html.escape(ylabel)}</text>')
    bar_series = [s for s in series if s.kind == "bars"]
    for k, s in enumerate(bar_series):
        for lo, hi, v in zip(s.x, s.x[1:], s.y):
            if v is None:
                continue
            a = lo + (hi - lo) * (k / len(bar_series) + 0.04)
            b = lo + (hi - lo) * ((k + 1) / len(bar_series) - 0.04)
            parts.append(f'<rect class="bar" x="{px(a):.1f}" y="{py(max(v, y_lo)):.1f}" width="{px(b) - px(a):.1f}" '
                         f'height="{py(y_lo) - py(max(v, y_lo)):.1f}" fill="{s.color}" fill-opacity="0.75">'
                         f'<title>{html.escape(s.label)} {_fmt(lo)} to {_fmt(hi)}: {_fmt(v)}</title></rect>')
    for s in series:
        if s.kind == "line":
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.x, s.y) if y is not None)
            dash = ' stroke-dasharray="5 4"' if s.dashed else ""
            parts.append(f'<polyline class="curve" points="{path}" fill="none" stroke="{s.color}" stroke-width="1.6"'
                         f'{dash}/>')
    for i, s in enumerate(legend):
        y = 12 + 15 * i
        parts.append(f'<rect x="{left}" y="{y - 8}" width="10" height="10" fill="{s.color}"/>'
                     f'<text x="{left + 15}" y="{y + 1}" class="pt">{html.escape(s.label)}</text>')
    for i, note in enumerate(notes):
        parts.append(f'<text x="{left}" y="{12 + 15 * (len(legend) + i) + 1}" class="note-text">'
                     f'{html.escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(label: str, color: str, edges: list[float], counts: list[int]) -> Series:
    """Bars for the non-empty bins of a histogram."""
    return Series(label, color, "bars", list(edges), [c if c else None for c in counts])


def _figure(figures: dict[str, Any], key: str, fmt: str = ".4f") -> str:
    v = figures.get(key)
    return "–" if v is None else format(v, fmt)


def reliability_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    """Accuracy per confidence bin, reference beside candidate, with the diagonal of perfect calibration."""
    ref, cand = data["reference"], data["candidate"]
    notes = [f"ECE reference {_figure(figures, 'reference_ece')}, candidate {_figure(figures, 'ece')}"]
    if figures.get("ece_calibrated") is not None:
        notes.append(f"candidate after temperature T = {_figure(figures, 'temperature', '.3g')}: "
                     f"ECE {_figure(figures, 'ece_calibrated')}")
    return xy_plot([Series("reference", REFERENCE_COLOR, "bars", ref["edges"], ref["accuracy"]),
                    Series("candidate", color, "bars", cand["edges"], cand["accuracy"]),
                    Series("", "#000", "line", [0.0, 1.0], [0.0, 1.0], dashed=True)],
                   "confidence (top probability)", "accuracy", (0.0, 1.0), (0.0, 1.0), notes)


def pr_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    notes = [f"against the {data.get('basis', 'labels')}; ROC-AUC {_figure(figures, 'roc_auc')}"]
    return xy_plot([Series("candidate", color, "line", data["recall"], data["precision"])], "recall", "precision",
                   (0.0, 1.0), (0.0, 1.05), notes)


def cosine_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    edges = data["edges"]
    notes = [f"mean cosine {_figure(figures, 'mean_cosine')}, lowest {_figure(figures, 'min_cosine')}"]
    return xy_plot([_histogram("rows", color, edges, data["counts"])], "cosine to the reference per row", "rows",
                   (edges[0], edges[-1]), notes=notes)


def neighbours_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    k = data.get("k")
    notes = [f"1-NN agreement {data['agreement']:.1f}%; the reference's nearest in the top {k}: "
             f"{data['recall_at_k']:.1f}%"]
    return xy_plot([Series("", color, "bars", [0.0, 1.0, 2.0], [data["agreement"], data["recall_at_k"]])],
                   "nearest neighbour over the evaluation set", "% of rows", (0.0, 2.0), (0.0, 100.0), notes,
                   x_ticks=[(0.5, "same nearest row"), (1.5, f"in top {k}")])


def iou_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    edges = data["edges"]
    notes = [f"matched IoU {_figure(figures, 'matched_iou')}; missed {_figure(figures, 'missed_boxes', '.0f')}, "
             f"extra {_figure(figures, 'extra_boxes', '.0f')} boxes"]
    return xy_plot([_histogram("reference boxes", color, edges, data["counts"])],
                   data.get("of", "IoU per reference box"), "boxes", (edges[0], edges[-1]), notes=notes)


def edit_distance_plot(data: dict[str, Any], figures: dict[str, Any], color: str) -> str:
    d = data["distance"]
    edges = [v - 0.5 for v in d] + [d[-1] + 0.5]
    ticks = [(v, f"≥{v}" if i == len(d) - 1 and data.get("last_is_10_or_more") else str(v)) for i, v in enumerate(d)]
    notes = [f"token error rate {_figure(figures, 'token_error_rate')}, sequences equal "
             f"{_figure(figures, 'sequence_agreement', '.1f')}%"]
    return xy_plot([_histogram("sequences", color, edges, data["count"])], "edit distance to the reference",
                   "sequences", (edges[0], edges[-1]), notes=notes, x_ticks=ticks)


#: plot key in TaskMetrics.plots -> (caption, function drawing it from (data, figures, color)), in page order.
TASK_FIGURES = {
    "reliability": ("reliability diagram", reliability_plot),
    "pr_curve": ("precision-recall curve", pr_plot),
    "cosine_histogram": ("cosine per row", cosine_plot),
    "nearest_neighbours": ("nearest-neighbour agreement", neighbours_plot),
    "iou_histogram": ("IoU per reference box", iou_plot),
    "edit_distances": ("edit distance per sequence", edit_distance_plot),
}


# ---------------------------------------------------------------------------------------------------------------
# Tables and the page.


def _td(value: object, numeric: bool = True) -> str:
    return f'<td class="{"num" if numeric else "txt"}">{html.escape(str(value))}</td>'


def summary_rows(runs: list[tuple[str, RunResult]], front: set[str]) -> list[list[str]]:
    rows = []
    for label, run in runs:
        lat, acc = run.latency, run.accuracy
        rows.append([
            label + (" ★" if label in front else ""), run.runtime.split(" (")[0] or "–",
            format_size(run.size_bytes), num_cell(lat.p50_ms, ".3f"), num_cell(lat.p90_ms, ".3f"),
            num_cell(lat.p99_ms, ".3f"),
            num_cell(lat.throughput_per_s, ".1f"), num_cell(acc.agreement if acc else None, ".2f"),
            num_cell(acc.accuracy_drop if acc else None, "+.2f"), num_cell(acc.min_cosine if acc else None, ".6f"),
        ])
    return rows


SUMMARY_COLUMNS = ("artifact", "runtime", "size", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "top-1 agree %",
                   "drop pts", "cosine")
OUTPUT_COLUMNS = ("artifact", "output", "top-1 agree %", "accuracy %", "cosine", "SNR dB", "max abs err",
                  "mean abs err")


def output_rows(runs: list[tuple[str, RunResult]]) -> list[list[str]]:
    rows = []
    for label, run in runs:
        if run.accuracy is None:
            continue
        for name, m in run.accuracy.per_output.items():
            rows.append([
                label, name, num_cell(m.top1_agreement, ".2f"), num_cell(m.accuracy, ".2f"), num_cell(m.cosine, ".6f"),
                num_cell(m.snr_db, ".1f"), num_cell(m.max_abs_error, ".3g"), num_cell(m.mean_abs_error, ".3g"),
            ])
    return rows


def _html_table(columns: tuple[str, ...], rows: list[list[str]], text_columns: int) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_td(c, numeric=i >= text_columns) for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _points(runs: list[tuple[str, RunResult]], colors: dict[str, str]) -> list[Point]:
    return [
        Point(label, run.latency.p50_ms, run.size_bytes, run.accuracy.accuracy_drop if run.accuracy else None,
              colors[label])
        for label, run in runs
    ]


def _front_labels(points: list[Point]) -> set[str]:
    usable = [p for p in points if p.drop is not None]
    return {usable[i].label for i in pareto_front([(p.latency_ms, p.drop) for p in usable])}


#: The figures the task tables show beside each output's headline, per task (those present in the results).
KEY_FIGURES = {
    "classification": ("accuracy", "reference_accuracy", "top1_agreement", "f1_macro", "roc_auc", "ece",
                       "reference_ece", "ece_calibrated", "temperature"),
    "multilabel": ("label_agreement", "f1_macro", "roc_auc"),
    "regression": ("r2", "mae", "rmse", "r2_vs_labels"),
    "embedding": ("mean_cosine", "min_cosine", "nn_agreement", "knn_accuracy"),
    "detection": ("matched_iou", "box_agreement", "missed_boxes", "extra_boxes", "max_score_error", "map50"),
    "dense": ("iou", "pixel_agreement", "miou"),
    "sequence": ("token_error_rate", "sequence_agreement", "token_error_rate_vs_labels"),
}
TASK_COLUMNS = ("artifact", "output", "task", "headline", "other figures", "drop pts")


def _task_outputs(runs: list[tuple[str, RunResult]]) -> dict[str, list[tuple[str, RunResult, Any]]]:
    """Output -> (label, run, TaskMetrics) of every run that scored it, outputs in order of first appearance."""
    out: dict[str, list[tuple[str, RunResult, Any]]] = {}
    for label, run in runs:
        for name, m in (run.accuracy.tasks if run.accuracy else {}).items():
            out.setdefault(name, []).append((label, run, m))
    return out


def task_rows(runs: list[tuple[str, RunResult]]) -> list[list[str]]:
    """Per output and run with a task (not generic): its headline figure and drop, and the task's key figures."""
    rows = []
    for name, entries in _task_outputs(runs).items():
        for label, _, m in entries:
            if m.task not in KEY_FIGURES:
                continue
            others = "; ".join(f"{k} {m.figures[k]:.4g}" for k in KEY_FIGURES[m.task]
                               if k != m.headline and m.figures.get(k) is not None)
            value = "–" if m.value is None or math.isnan(m.value) else f"{m.value:.4g}"
            rows.append([label, name, m.task, f"{m.headline} {value}", others or "–", num_cell(m.drop, ".2f")])
    return rows


def task_section(runs: list[tuple[str, RunResult]], colors: dict[str, str]) -> str:
    """Per output with task figures: its table rows, then each run's figures (not the reference compared with
    itself)."""
    parts = []
    for name, entries in _task_outputs(runs).items():
        figs = []
        for label, run, m in entries:
            if run.is_reference:
                continue
            for key, (caption, draw) in TASK_FIGURES.items():
                if m.plots.get(key):
                    figs.append(f'<figure><figcaption>{html.escape(label)}: {caption}</figcaption>'
                                f'{draw(m.plots[key], m.figures, colors[label])}</figure>')
        rows = [r for r in task_rows(runs) if r[1] == name]
        if not figs and not rows:
            continue
        parts.append(f"<h3>{html.escape(name)} ({html.escape(entries[0][2].task)})</h3>")
        if rows:
            parts.append(_html_table(TASK_COLUMNS, rows, text_columns=5))
        parts.append(f'<div class="figs">{"".join(figs)}</div>')
    if not parts:
        return '<p class="note">No task metrics in these results (no reference, or outputs without a task).</p>'
    return "".join(parts)


BUILD_COLUMNS = ("artifact", "verdict", "verified on", "task figures at build", "kept in higher precision",
                 "latency vs FP32 at build", "temperature")
LAYER_COLUMNS = ("artifact", "layer", "op", "kept as", "error at its output (INT8)", "error it adds")


def _verdict(record: Any) -> str:
    if not isinstance(record, dict):
        return str(record)  # "reference", "skipped (--no-verify)"
    text = verdict(record.get("passed"))
    before = record.get("before_fallback")
    if isinstance(before, dict) and not before.get("passed", True):
        text += f" after fallback ({verdict(False)} before: {'; '.join(before.get('breaches') or [])})"
    elif record.get("breaches"):
        text += f" ({'; '.join(record['breaches'])})"
    return text


def _build_figures(record: Any) -> str:
    if not isinstance(record, dict):
        return "–"
    before = (record.get("before_fallback") or {}).get("outputs") or {}
    cells = []
    for name, m in (record.get("outputs") or {}).items():
        if m.get("value") is None:
            continue
        was = before.get(name) or {}
        drop = f"drop {m['drop']:.2f}" if m.get("drop") is not None else ""
        if was.get("drop") is not None:
            drop = f"drop {was['drop']:.2f} -> {m['drop']:.2f}"
        cells.append(f"{name} {m['task']} {m['headline']} {m['value']:.4g} ({drop} pts)")
    return "; ".join(cells) or "–"


def _latency(check: dict[str, Any] | None) -> str:
    from edgec.benchmarks.verify import latency_summary

    return latency_summary(check) if check else "–"


def build_rows(runs: list[tuple[str, RunResult]]) -> tuple[list[list[str]], list[list[str]]]:
    """The build's verdict per artifact that carries one, and the layers its fallback kept in higher precision."""
    rows, layers = [], []
    for label, run in runs:
        if not run.build:
            continue
        record = run.build.get("verification")
        fallback = (record.get("fallback") or {}) if isinstance(record, dict) else {}
        kept = fallback.get("kept") or []
        confidence = run.build.get("confidence") or {}
        rows.append([label, _verdict(record), record.get("data", "–") if isinstance(record, dict) else "–",
                     _build_figures(record), ", ".join(kept) or ("none" if isinstance(record, dict) else "–"),
                     _latency(run.build.get("latency_check")),
                     "; ".join(f"{k} T = {c['temperature']:.3f}" for k, c in confidence.items()) or "–"])
        ranked = {s["node"]: s for s in fallback.get("ranking") or []}
        for layer in kept:
            s = ranked.get(layer, {})
            layers.append([label, layer, s.get("op_type", "–"), fallback.get("kept_as") or "–",
                           num_cell(s.get("rel_error"), ".4g"),
                           num_cell(s.get("increase"), "+.4g")])
    return rows, layers


def build_section(runs: list[tuple[str, RunResult]]) -> str:
    rows, layers = build_rows(runs)
    if not rows:
        return ""
    parts = ["<h2>Build verification</h2>", _html_table(BUILD_COLUMNS, rows, text_columns=len(BUILD_COLUMNS)),
             '<p class="note">What edgec build measured on its held-out samples before shipping each artifact: the '
             "verdict against the accuracy budget (drops before -> after the fallback), the layers kept in higher "
             "precision, and the artifact's latency against the FP32 export on the build host.</p>"]
    if layers:
        parts += ["<h3>Layers kept in higher precision</h3>", _html_table(LAYER_COLUMNS, layers, text_columns=4),
                  '<p class="note">Layer-wise relative error of each kept layer\'s output in the INT8 build, and '
                  "the part of it the layer adds (its inputs' error taken out); the task figures after keeping them "
                  "are in the table above.</p>"]
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note,.meta{color:#555;font-size:0.85em}.plot{max-width:100%;height:auto;background:#fff}
.grid{stroke:#e5e5e5}.tick{font-size:11px;fill:#555}.axis{font-size:12px;fill:#333}.label{font-size:12px}
.pt{font-size:10px;fill:#333}.front{fill:none;stroke:#000;stroke-dasharray:5 4;stroke-width:1.2}
h3{font-size:1em;margin-top:1.2em}.figs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0}figcaption{font-size:0.8em;color:#444}.note-text{font-size:10px;fill:#555}
"""


def render_html(sources: list[tuple[str, BenchResults]], title: str = "edgec benchmark report") -> str:
    """The whole page as a string: no external resources, no script."""
    runs = _runs(sources)
    if not runs:
        raise InputFileError("the results files hold no runs", hint="pass JSON files written by edgec bench --json")
    colors = {label: PALETTE[i % len(PALETTE)] for i, (label, _) in enumerate(runs)}
    points = _points(runs, colors)
    front = _front_labels(points)
    meta = []
    for source, results in sources:
        env = results.runs[0].environment if results.runs else {}
        meta.append(
            f"<li><b>{html.escape(source)}</b>: {len(results.runs)} runs, {results.samples} samples"
            f"{' from ' + html.escape(results.data_source) if results.data_source else ''}; reference: "
            f"{html.escape(results.reference or '–')}; {html.escape(str(env.get('cpu', '')))} "
            f"({html.escape(str(env.get('platform', '')))}); {html.escape(results.created_at)}</li>"
        )
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><ul class=\"meta\">{''.join(meta)}</ul>",
        "<h2>Summary</h2>",
        _html_table(SUMMARY_COLUMNS, summary_rows(runs, front), text_columns=2),
        '<p class="note">★ on the Pareto front of p50 latency against accuracy drop (nothing is both faster and '
        "more accurate). Drop: reference minus candidate accuracy with labels, else 100 minus top-1 agreement.</p>",
        "<h2>Latency distribution</h2>", latency_plot(runs, colors),
        '<p class="note">Box: 25th-75th percentile; thick line: p50; whisker: min to p99; dots: timed calls.</p>',
        "<h2>Accuracy drop against latency</h2>", scatter_plot(points, "latency_ms", "p50 latency (ms)"),
        "<h2>Accuracy drop against size</h2>", scatter_plot(points, "size_bytes", "artifact size", log_x=True),
        '<p class="note">Dashed line: the Pareto front (lower-left is better on both axes).</p>',
        "<h2>Errors per output</h2>", _html_table(OUTPUT_COLUMNS, output_rows(runs), text_columns=2),
        "<h2>Task metrics per output</h2>", task_section(runs, colors),
        '<p class="note">Reliability: accuracy of the rows in each confidence bin (grey: the reference); on the '
        "dashed diagonal a model is as accurate as it is confident. ECE: expected calibration error (15 bins).</p>",
        build_section(runs),
        "</body></html>\n",
    ])


def render_markdown(sources: list[tuple[str, BenchResults]], title: str = "edgec benchmark report") -> str:
    """The results tables as Markdown: the bench table per results file, then errors per output."""
    parts = [f"# {title}", ""]
    for source, results in sources:
        if len(sources) > 1:
            parts += [f"## {source}", ""]
        parts += [markdown_table(results), ""]
    rows = output_rows(_runs(sources))
    if rows:
        parts += ["## Errors per output", "", "| " + " | ".join(OUTPUT_COLUMNS) + " |",
                  "|" + "|".join("---" if i < 2 else "---:" for i in range(len(OUTPUT_COLUMNS))) + "|"]
        parts += ["| " + " | ".join(r) + " |" for r in rows]
    runs = _runs(sources)
    rows = task_rows(runs)
    if rows:
        parts += ["", "## Task metrics per output", "",
                  md_table(TASK_COLUMNS, rows, numeric_from=5)]
    rows, layers = build_rows(runs)
    if rows:
        parts += ["", "## Build verification", "", md_table(BUILD_COLUMNS, rows, numeric_from=len(BUILD_COLUMNS))]
    if layers:
        parts += ["", md_table(LAYER_COLUMNS, layers, numeric_from=3)]
    return "\n".join(parts) + "\n"


def write_report(paths: list[Path], html_out: Path | None, md_out: Path | None, title: str) -> list[Path]:
    """Render the results files to ``html_out`` and/or ``md_out``; returns what was written."""
    sources = load_results(paths)
    written = []
    for out, render in ((html_out, render_html), (md_out, render_markdown)):
        if out is None:
            continue
        text = render(sources, title)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        written.append(out)
    return written
