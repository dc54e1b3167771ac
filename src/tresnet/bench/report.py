"""Benchmark rows as a terminal table, speed ratios, a Markdown table, JSON, CSV and a top-1 vs speed plot.

Every function takes :class:`~tresnet.bench.rows.BenchRow` objects or their flat dicts (as read from
a result file). Files are written atomically (:mod:`tresnet.files`): a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tresnet.bench.ceiling import FORMATS, PEAK_FASTEST, PEAK_GIVEN
from tresnet.bench.rows import MODES, BenchRow, as_rows
from tresnet.bench.specs import timm_name_of
from tresnet.errors import MissingDependencyError
from tresnet.files import atomic_write, write_text

BASELINE = "resnet50"
Rows = Iterable[BenchRow | Mapping[str, Any]]


def _clean(value):
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _fmt_diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _spread(row: BenchRow, mode: str) -> str:
    result = row.mode(mode)
    return _fmt(result.img_per_s_spread_pct) if result.img_per_s else "-"


def _max_batch(row: BenchRow) -> int | None:
    return row.train.max_batch or row.infer.max_batch


def _fmt_fraction(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt_of_peak(row: BenchRow) -> str:
    """``12.3% bf16``: the row's share of its number format's compute ceiling, or ``-``."""
    if row.infer_peak_fraction is None:
        return "-"
    return f"{_fmt_fraction(row.infer_peak_fraction)} {row.number_format}"


# column title, function of a row -> text; a column whose cells are all "-" is left out.
_COLUMNS: list[tuple[str, Callable[[BenchRow], str]]] = [
    ("model", lambda r: r.model),
    ("impl", lambda r: r.impl),
    ("px", lambda r: str(r.img_size)),
    ("infer batch", lambda r: _fmt(r.infer.batch_size)),
    ("infer img/s", lambda r: _fmt(r.infer.img_per_s)),
    ("±%", lambda r: _spread(r, "infer")),
    ("train batch", lambda r: _fmt(r.train.batch_size)),
    ("train img/s", lambda r: _fmt(r.train.img_per_s)),
    ("±% ", lambda r: _spread(r, "train")),
    ("max batch", lambda r: _fmt(_max_batch(r))),
    ("params M", lambda r: _fmt(r.params_m, 2)),
    ("GMACs", lambda r: _fmt(r.gmacs, 2)),
    ("saved MiB/img", lambda r: _fmt(r.saved_mib_per_img)),
    ("+ MiB/step", lambda r: _fmt(r.saved_constant_mib)),
    ("peak MiB", lambda r: _fmt(r.train.peak_mem_mib or r.infer.peak_mem_mib, 0)),
    ("max rel diff", lambda r: _fmt_diff(r.max_rel_diff)),
    ("GFLOP/s", lambda r: _fmt(r.infer_gflop_per_s, 0)),
    ("of ceiling", _fmt_of_peak),
    ("top-1", lambda r: _fmt(r.top1, 2)),
]


def format_table(rows: Rows) -> str:
    """A fixed-width table of ``rows`` for the terminal (columns with no value in any row are left out)."""
    cells = [[fn(r) for _, fn in _COLUMNS] for r in as_rows(rows)]
    keep = [i for i in range(len(_COLUMNS)) if any(c[i] != "-" for c in cells)]
    titles = [_COLUMNS[i][0].strip() for i in keep]
    table = [[c[i] for i in keep] for c in cells]
    widths = [max(len(t), *(len(r[j]) for r in table)) if table else len(t) for j, t in enumerate(titles)]
    left = {"model", "impl"}

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if t in left else v.rjust(w) for v, w, t in zip(values, widths, titles, strict=True))

    out = [line(titles), line(["-" * w for w in widths])]
    out += [line(r) for r in table]
    return "\n".join(out)


def speed_ratio(rows: Rows, numerator: str, denominator: str, mode: str) -> float | None:
    """images/s of model ``numerator`` over ``denominator`` in ``mode`` (None if either is missing)."""
    by_label = {r.model: r for r in as_rows(rows)}
    a, b = by_label.get(numerator), by_label.get(denominator)
    a_speed = a.mode(mode).img_per_s if a else None
    b_speed = b.mode(mode).img_per_s if b else None
    if not a_speed or not b_speed:
        return None
    return a_speed / b_speed


def comparisons(rows: Rows) -> list[tuple[str, str]]:
    """The pairs worth a ratio: each of our models against its plain model (for a form), against
    timm's implementation of the same network (``timm:tresnet_m``; ``gernet_s`` for ``genet_light``) and
    against ResNet50."""
    rows = as_rows(rows)
    labels = {r.model for r in rows}
    pairs = []
    for row in rows:
        if row.impl != "tresnet":
            continue
        plain = [row.name] if row.form else []
        timm_name = timm_name_of(row.name) or row.name
        timm_peers = [r.model for r in rows if r.impl == "timm" and r.name == timm_name]
        for other in (*plain, *timm_peers, BASELINE):
            if other in labels and other != row.model:
                pairs.append((row.model, other))
    return pairs


def ratio_rows(rows: Rows) -> list[dict]:
    """``{"numerator", "denominator", "infer", "train", "max_batch"}`` for every pair of :func:`comparisons`."""
    rows = as_rows(rows)
    by_label = {r.model: r for r in rows}
    out = []
    for a, b in comparisons(rows):
        entry: dict[str, Any] = {"numerator": a, "denominator": b}
        for mode in MODES:
            entry[mode] = speed_ratio(rows, a, b, mode)
        max_a, max_b = _max_batch(by_label[a]), _max_batch(by_label[b])
        entry["max_batch"] = max_a / max_b if max_a and max_b else None
        out.append(entry)
    return out


def format_ratios(rows: Rows) -> str:
    """One line per pair of :func:`comparisons`, e.g. ``tresnet_m / resnet50: infer 1.12x, train 0.95x``."""
    lines = []
    for entry in ratio_rows(rows):
        parts = [f"{mode} {entry[mode]:.2f}x" for mode in MODES if entry[mode] is not None]
        if entry["max_batch"] is not None:
            parts.append(f"max batch {entry['max_batch']:.2f}x")
        if parts:
            lines.append(f"{entry['numerator']} / {entry['denominator']}: {', '.join(parts)}")
    return "\n".join(lines)


def format_speed(row: BenchRow, mode: str, digits: int = 1) -> str:
    """``12.3 ±4%``: the median images/s of ``mode`` and its spread, or ``-`` when not timed."""
    result = row.mode(mode)
    if result.img_per_s is None:
        return "-"
    return f"{result.img_per_s:,.{digits}f} ±{result.img_per_s_spread_pct or 0:.0f}%"


def settings_line(row: BenchRow | Mapping[str, Any]) -> str:
    """How ``row`` was measured, in one line: device, versions, precision, clock, repetitions."""
    (row,) = as_rows([row])
    clock = "process CPU time" if row.timer == "cpu" else "wall-clock time"
    return (f"{row.device_name}; torch {row.torch_version}, timm {row.timm_version}; "
            f"{row.precision}{', channels-last' if row.channels_last else ''}"
            f"{', torch.compile' if row.compiled else ''}; {clock}; median of {row.repeats} timed turns "
            f"x {row.iters} batch(es) after {row.warmup} warm-up turn(s), models measured in turns; "
            f"±% = interquartile range")


def markdown_table(rows: Rows) -> str:
    """A Markdown table of ``rows`` for the docs (speeds with their spread; a ``max rel diff`` column
    when a deployment form is among them, and the inference GFLOP/s and share of the compute ceiling
    when measured)."""
    rows = as_rows(rows)
    diffs = any(r.max_rel_diff is not None for r in rows)
    compute = any(r.number_format is not None for r in rows)
    per_step = any(r.saved_constant_mib is not None for r in rows)  # files written before it was measured lack it
    head = ("| model | impl | px | batch | infer img/s | train img/s | params (M) | GMACs | saved MiB/img "
            + ("| + MiB/step " if per_step else "") + "| peak train MiB |" + (" max rel diff |" if diffs else "")
            + (" infer GFLOP/s | of ceiling |" if compute else "") + " top-1 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        batch = r.train.batch_size or r.infer.batch_size
        diff = f" {_fmt_diff(r.max_rel_diff)} |" if diffs else ""
        step = f" {_fmt(r.saved_constant_mib)} |" if per_step else ""
        gflops = f" {_fmt(r.infer_gflop_per_s, 0)} | {_fmt_of_peak(r)} |" if compute else ""
        lines.append(f"| {r.model} | {r.impl} | {r.img_size} | {_fmt(batch)} | {format_speed(r, 'infer')} | "
                     f"{format_speed(r, 'train')} | {_fmt(r.params_m, 2)} | {_fmt(r.gmacs, 2)} | "
                     f"{_fmt(r.saved_mib_per_img)} |{step} {_fmt(r.train.peak_mem_mib, 0)} |{diff}{gflops} "
                     f"{_fmt(r.top1, 2)} |")
    return "\n".join(lines)


def ceilings_of(rows: Rows) -> dict[str, tuple[float | None, str | None]]:
    """``number format -> (GFLOP/s, source)``: the compute ceilings ``rows`` were compared with, in the order
    fp32, bf16, int8 (empty when none was)."""
    found = {r.number_format: (r.peak_gflop_per_s, r.peak_source) for r in as_rows(rows) if r.number_format}
    return {fmt: found[fmt] for fmt in FORMATS if fmt in found}


def _fmt_ceiling(fmt: str, gflops: float | None, source: str | None, probes: float | None) -> str:
    """``fp32 310``; ``fp32 109 (a path's rate, above the probes' 98)``; or the format without a ceiling."""
    if not gflops:
        return f"{fmt} - (no fast {fmt} product on this CPU)"
    if source == PEAK_FASTEST:
        return f"{fmt} {_fmt(gflops, 0)} (a path's rate, above the probes' {_fmt(probes, 0)})"
    return f"{fmt} {_fmt(gflops, 0)}"


def format_ceilings(rows: Rows) -> str:
    """One line: ``compute ceiling (measured, 2 threads): fp32 310, bf16 2,150, int8 2,700 GFLOP/s``, or an empty
    string when ``rows`` were not compared with one. A ceiling set by a path faster than the probes says so."""
    ceilings = ceilings_of(rows)
    if not ceilings:
        return ""
    given = [fmt for fmt, (_, source) in ceilings.items() if source == PEAK_GIVEN]
    if not given:
        how = "measured"
    elif len(given) == len(ceilings):
        how = "given"
    else:
        how = f"{', '.join(given)} given, the others measured"
    rows = as_rows(rows)
    threads = rows[0].threads if rows[0].device == "cpu" else None
    on = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    probes = {r.number_format: r.probe_gflop_per_s for r in rows if r.number_format}
    values = ", ".join(_fmt_ceiling(fmt, gflops, source, probes.get(fmt))
                       for fmt, (gflops, source) in ceilings.items())
    return f"compute ceiling ({how}{on}): {values} GFLOP/s"


def write_json(rows: Rows, path: str | os.PathLike) -> Path:
    """Write ``rows`` as a JSON list of flat dicts (non-finite numbers as null), atomically; return the path."""
    flat = [r.to_dict() for r in as_rows(rows)]
    return write_text(path, json.dumps(_clean(flat), indent=2, allow_nan=False) + "\n")


def write_csv(rows: Rows, path: str | os.PathLike) -> Path:
    """Write ``rows`` as CSV (one column per field, lists as JSON text), atomically; return the path."""
    flat = _clean([r.to_dict() for r in as_rows(rows)])
    columns: list[str] = []
    for row in flat:
        columns += [k for k in row if k not in columns]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in flat:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})

    return atomic_write(path, write)


def _plot_mode(axes, rows: Sequence[BenchRow], mode: str) -> None:
    """One panel: published top-1 against ``mode``'s images/s, our models as red stars."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    points = sorted(((r, speed, top1) for r in rows
                     if (speed := r.mode(mode).img_per_s) and (top1 := r.top1) is not None), key=lambda point: point[1])
    placed: list[tuple[float, float]] = []  # labels of nearly coincident points go one above the other
    for row, x, y in points:
        ours = row.impl == "tresnet"
        axes.scatter([x], [y], s=90 if ours else 40, marker="*" if ours else "o",
                     color="tab:red" if ours else "tab:blue", zorder=3)
        level = sum(1 for px, py in placed if abs(py - y) < 0.15 and abs(math.log(px / x)) < 0.5)
        placed.append((x, y))
        axes.annotate(row.model, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * level), fontsize=8)
    if not points:
        axes.text(0.5, 0.5, "no model with a published top-1", ha="center", va="center", transform=axes.transAxes)
    batch = sorted({size for r, _, _ in points if (size := r.mode(mode).batch_size) is not None})
    batch_text = f"batch {batch[0]}" if len(batch) == 1 else "batch per model"
    axes.set_xlabel(f"{'inference' if mode == 'infer' else 'training'} images/s ({batch_text}, log scale)")
    axes.set_ylabel("ImageNet top-1 (%)")
    axes.set_xscale("log")  # throughputs span more than ten times
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.12, y=0.12)


def _plot_title(rows: Sequence[BenchRow]) -> str:
    first = rows[0]
    settings = f"{first.device_name}, {first.precision}"
    if first.channels_last:
        settings += ", channels-last"
    if first.compiled:
        settings += ", compiled"
    return f"Top-1 vs throughput: {settings}"


def plot_results(rows: Rows, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot published top-1 against measured images/s (one panel per measured mode), as the paper's
    figure; our models stand out. Writes a PNG atomically and returns its path.

    Rows without a published top-1 are left out. Raises :class:`MissingDependencyError` without matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install 'tresnet[bench]'") from None
    rows = as_rows(rows)
    modes = [m for m in MODES if any(r.mode(m).img_per_s for r in rows)] or ["infer"]
    figure = Figure(figsize=(6.0 * len(modes), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    for i, mode in enumerate(modes):
        _plot_mode(figure.add_subplot(1, len(modes), i + 1), rows, mode)
    if rows:
        figure.suptitle(title or _plot_title(rows), fontsize=10)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
