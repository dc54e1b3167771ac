"""Benchmark rows as a terminal table, speed ratios, a Markdown table, JSON, CSV and a top-1 vs speed plot.

Files are written atomically (:func:`tresnet.checkpoint.atomic_write`): a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from tresnet.checkpoint import atomic_write
from tresnet.errors import MissingDependencyError

MODES = ("infer", "train")
BASELINE = "resnet50"


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


def _peak(row: dict) -> float | None:
    return row.get("train_peak_mem_mib") or row.get("infer_peak_mem_mib")


# column title, function of a row -> text; a column whose cells are all "-" is left out.
_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("impl", lambda r: r["impl"]),
    ("px", lambda r: str(r["img_size"])),
    ("infer batch", lambda r: _fmt(r.get("infer_batch_size"))),
    ("infer img/s", lambda r: _fmt(r.get("infer_img_per_s"))),
    ("±%", lambda r: _fmt(r.get("infer_img_per_s_spread_pct")) if r.get("infer_img_per_s") else "-"),
    ("train batch", lambda r: _fmt(r.get("train_batch_size"))),
    ("train img/s", lambda r: _fmt(r.get("train_img_per_s"))),
    ("±% ", lambda r: _fmt(r.get("train_img_per_s_spread_pct")) if r.get("train_img_per_s") else "-"),
    ("max batch", lambda r: _fmt(r.get("max_train_batch") or r.get("max_infer_batch"))),
    ("params M", lambda r: _fmt(r.get("params_m"), 2)),
    ("GMACs", lambda r: _fmt(r.get("gmacs"), 2)),
    ("saved MiB/img", lambda r: _fmt(r.get("saved_mib_per_img"))),
    ("peak MiB", lambda r: _fmt(_peak(r), 0)),
    ("top-1", lambda r: _fmt(r.get("top1"), 2)),
]


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width table of ``rows`` for the terminal (columns with no value in any row are left out)."""
    cells = [[fn(r) for _, fn in _COLUMNS] for r in rows]
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


def speed_ratio(rows: Sequence[dict], numerator: str, denominator: str, mode: str) -> float | None:
    """images/s of model ``numerator`` over ``denominator`` in ``mode`` (None if either is missing)."""
    by_label = {r["model"]: r for r in rows}
    a, b = by_label.get(numerator), by_label.get(denominator)
    if not a or not b or not a.get(f"{mode}_img_per_s") or not b.get(f"{mode}_img_per_s"):
        return None
    return a[f"{mode}_img_per_s"] / b[f"{mode}_img_per_s"]


def comparisons(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The pairs worth a ratio: each of our models against timm's implementation of it and against ResNet50."""
    labels = {r["model"] for r in rows}
    pairs = []
    for row in rows:
        if row["impl"] != "tresnet":
            continue
        for other in (f"timm:{row['name']}", BASELINE):
            if other in labels and other != row["model"]:
                pairs.append((row["model"], other))
    return pairs


def ratio_rows(rows: Sequence[dict]) -> list[dict]:
    """``{"numerator", "denominator", "infer", "train", "max_batch"}`` for every pair of :func:`comparisons`."""
    by_label = {r["model"]: r for r in rows}
    out = []
    for a, b in comparisons(rows):
        entry = {"numerator": a, "denominator": b}
        for mode in MODES:
            entry[mode] = speed_ratio(rows, a, b, mode)
        max_a = by_label[a].get("max_train_batch") or by_label[a].get("max_infer_batch")
        max_b = by_label[b].get("max_train_batch") or by_label[b].get("max_infer_batch")
        entry["max_batch"] = max_a / max_b if max_a and max_b else None
        out.append(entry)
    return out


def format_ratios(rows: Sequence[dict]) -> str:
    """One line per pair of :func:`comparisons`, e.g. ``tresnet_m / resnet50: infer 1.12x, train 0.95x``."""
    lines = []
    for entry in ratio_rows(rows):
        parts = [f"{mode} {entry[mode]:.2f}x" for mode in MODES if entry[mode] is not None]
        if entry["max_batch"] is not None:
            parts.append(f"max batch {entry['max_batch']:.2f}x")
        if parts:
            lines.append(f"{entry['numerator']} / {entry['denominator']}: {', '.join(parts)}")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict]) -> str:
    """A Markdown table of ``rows`` for the README (speeds with their spread)."""

    def speed(row: dict, mode: str) -> str:
        value = row.get(f"{mode}_img_per_s")
        if value is None:
            return "-"
        return f"{value:,.1f} ±{row.get(f'{mode}_img_per_s_spread_pct') or 0:.0f}%"

    head = ("| model | impl | px | batch | infer img/s | train img/s | params (M) | GMACs | saved MiB/img "
            "| peak train MiB | top-1 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        batch = r.get("train_batch_size") or r.get("infer_batch_size")
        lines.append(f"| {r['model']} | {r['impl']} | {r['img_size']} | {_fmt(batch)} | {speed(r, 'infer')} | "
                     f"{speed(r, 'train')} | {_fmt(r.get('params_m'), 2)} | {_fmt(r.get('gmacs'), 2)} | "
                     f"{_fmt(r.get('saved_mib_per_img'))} | {_fmt(r.get('train_peak_mem_mib'), 0)} | "
                     f"{_fmt(r.get('top1'), 2)} |")
    return "\n".join(lines)


def write_json(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` as a JSON list (non-finite numbers as null), atomically; return the path."""
    text = json.dumps(_clean(list(rows)), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` as CSV (one column per field, lists as JSON text), atomically; return the path."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in _clean(list(rows)):
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})

    return atomic_write(path, write)


def plot_results(rows: Sequence[dict], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot published top-1 against measured images/s (one panel per measured mode), as the paper's
    figure; our models stand out. Writes a PNG atomically and returns its path.

    Rows without a published top-1 are left out. Raises :class:`MissingDependencyError` without matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install 'tresnet[bench]'") from None
    modes = [m for m in MODES if any(r.get(f"{m}_img_per_s") for r in rows)] or ["infer"]
    figure = Figure(figsize=(6.0 * len(modes), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    for i, mode in enumerate(modes):
        axes = figure.add_subplot(1, len(modes), i + 1)
        points = [r for r in rows if r.get(f"{mode}_img_per_s") and r.get("top1") is not None]
        placed: list[tuple[float, float]] = []  # labels of nearly coincident points go one above the other
        for row in sorted(points, key=lambda r: r[f"{mode}_img_per_s"]):
            ours = row["impl"] == "tresnet"
            x, y = row[f"{mode}_img_per_s"], row["top1"]
            axes.scatter([x], [y], s=90 if ours else 40, marker="*" if ours else "o",
                         color="tab:red" if ours else "tab:blue", zorder=3)
            level = sum(1 for px, py in placed if abs(py - y) < 0.15 and abs(math.log(px / x)) < 0.5)
            placed.append((x, y))
            axes.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 4 + 9 * level), fontsize=8)
        if not points:
            axes.text(0.5, 0.5, "no model with a published top-1", ha="center", va="center",
                      transform=axes.transAxes)
        batch = sorted({r.get(f"{mode}_batch_size") for r in points} - {None})
        batch_text = f"batch {batch[0]}" if len(batch) == 1 else "batch per model"
        axes.set_xlabel(f"{'inference' if mode == 'infer' else 'training'} images/s ({batch_text}, log scale)")
        axes.set_ylabel("ImageNet top-1 (%)")
        axes.set_xscale("log")  # throughputs span more than ten times
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.grid(True, which="both", alpha=0.3)
        axes.margins(x=0.12, y=0.12)
    if rows:
        first = rows[0]
        settings = f"{first.get('device_name')}, {first.get('precision')}"
        if first.get("channels_last"):
            settings += ", channels-last"
        if first.get("compiled"):
            settings += ", compiled"
        figure.suptitle(title or f"Top-1 vs throughput: {settings}", fontsize=10)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
