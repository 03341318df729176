"""A sweep's results as tables (JSON, CSV, Markdown) and a plot (PNG, drawn with matplotlib).

The plot has the two panels of the paper's Figure 1: mIoU against GFLOPs and against
parameters, one marker shape and colour per variant, every point labelled with its name;
the points that differ from the base config in their variant only are joined by a line.
matplotlib is the ``experiments`` extra (``pip install -e ".[experiments]"``); it draws with
its Agg canvas, without pyplot, so no display is needed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from segformer_jax.files import atomic_write

MAX_CLASS_COLUMNS = 20  # a per-class IoU table in results.md up to this many classes
VARIANT_STYLE = {  # matplotlib marker, colour
    "b0": ("o", "#1f77b4"), "b1": ("s", "#ff7f0e"), "b2": ("^", "#2ca02c"),
    "b3": ("D", "#d62728"), "b4": ("v", "#9467bd"), "b5": ("p", "#8c564b"),
}
VARIANT_KEYS = ("model.variant", "config", "model.init")  # a variant (and its backbone weights)
PLOT_SIZE = (1500, 680)  # pixels of plot.png (at 100 dpi)


def _num(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * scale:,.{digits}f}"


def _changes(result: Mapping[str, Any]) -> str:
    parts = []
    for key, value in result.get("changes", {}).items():
        if key in VARIANT_KEYS:
            continue
        leaf = key.removeprefix("model.overrides.")
        if isinstance(value, (list, tuple)):
            value = "(" + ", ".join(str(v) for v in value) + ")"
        parts.append(f"{leaf}={value}")
    return ", ".join(parts) or "–"


def machine_line(machine: Mapping[str, Any]) -> str:
    return (f"{machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} CPUs, "
            f"jax {machine.get('jax', '?')} ({machine.get('backend', '?')} backend, "
            f"{machine.get('device_count', 1)} x {machine.get('device', '?')})")


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def over_seeds(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point of the sweep file (its seeds together, in sweep order): the first
    seed's row with ``mIoU``/``aAcc`` replaced by their means over the finished seeds, and
    ``mIoU_sd``/``aAcc_sd``, ``seeds`` and ``name`` (the point's name without its seed)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("group") or r["name"], []).append(r)
    rows = []
    for name, members in groups.items():
        row = dict(members[0], name=name, seeds=[m.get("seed") for m in members])
        for key in ("mIoU", "aAcc"):
            values = [m[key] for m in members if m.get(key) is not None and math.isfinite(m[key])]
            row[key], row[f"{key}_sd"] = _mean_sd(values) if values else (None, None)
        tops = [m["pretrain"]["top1"] for m in members if (m.get("pretrain") or {}).get("top1") is not None]
        row["pretrain_top1"] = _mean_sd(tops)[0] if tops else None
        rows.append(row)
    return rows


def _seeded(results: Sequence[Mapping[str, Any]]) -> bool:
    return any((r.get("group") or r["name"]) != r["name"] for r in results)


def _pm(mean: Any, sd: Any) -> str:
    return _num(mean, 100) + ("" if sd is None else f" ± {_num(sd, 100)}")


def markdown(results: Sequence[Mapping[str, Any]], sweep_file: str) -> str:
    first = results[0]
    lines = [f"Sweep `{sweep_file}`: {len(results)} points. Machine: {machine_line(first['machine'])}.",
             "",
             "| point | variant | changes | params (M) | GFLOPs | infer img/s | train img/s "
             "| train mem (MiB) | mIoU (%) | aAcc (%) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        memory = r.get("train_memory_bytes")
        lines.append(
            f"| {r['name']} | {r['variant']} | {_changes(r)} | {_num(r['params'], 1e-6, 3)} "
            f"| {_num(r.get('gflops'), 1, 3)} | {_num(r['infer_images_per_s'], 1, 1)} "
            f"| {_num(r['train_images_per_s'], 1, 2)} "
            f"| {_num(memory / 2**20 if memory is not None else None, 1, 0)} "
            f"| {_num(r.get('mIoU'), 100)} | {_num(r.get('aAcc'), 100)} |")
    sizes = sorted({"x".join(map(str, r["infer_size"])) for r in results})
    crops = sorted({f"batch {r['train_micro_batch']} at {'x'.join(map(str, r['crop_size']))}"
                    for r in results})
    steps = sorted({f"{r['total_steps']} steps of batch {r['batch_size']}" for r in results})
    lines += ["",
              f"GFLOPs: XLA cost analysis of one inference forward at {', '.join(sizes)} (per image; "
              "2 per multiply-accumulate). infer img/s: that forward jitted, batch "
              f"{first['infer_batch']}, median. train img/s and memory: the compiled training step "
              f"({', '.join(crops)}), median; memory = XLA arguments + temporaries + outputs. "
              f"mIoU / aAcc: validation split after {', '.join(steps)}."]
    if _seeded(results) or any(r.get("pretrain") for r in results):
        lines += ["", "Over seeds (mean ± sample standard deviation; a difference smaller than "
                      "the spread says nothing):", "",
                  "| point | pretrained (top-1 %) | seeds | mIoU (%) | aAcc (%) |",
                  "|---|---|---|---:|---:|"]
        for r in over_seeds(results):
            pre = "no" if r.get("pretrain") is None else f"yes ({_num(r['pretrain_top1'], 100)})"
            lines.append(f"| {r['name']} | {pre} | {', '.join(map(str, r['seeds']))} "
                         f"| {_pm(r['mIoU'], r['mIoU_sd'])} | {_pm(r['aAcc'], r['aAcc_sd'])} |")
    reports = [r["robustness"] for r in results if r.get("robustness")]
    if reports:
        from segformer_jax.robustness import markdown_table, table_rows
        header, rows = table_rows(reports)
        lines += ["", "Robustness: mIoU (%) clean and under each corruption (mean over its severities; "
                      "files in robustness/):", "",
                  markdown_table([h.replace("_", " ") for h in header], rows).rstrip("\n")]
    names = list(first.get("IoU", {}))
    if 0 < len(names) <= MAX_CLASS_COLUMNS and all(list(r.get("IoU", {})) == names for r in results):
        lines += ["", "Per-class IoU (%):", "",
                  "| point | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for r in results:
            lines.append(f"| {r['name']} | " + " | ".join(_num(r["IoU"][n], 100) for n in names) + " |")
    return "\n".join(lines) + "\n"


def csv_text(results: Sequence[Mapping[str, Any]]) -> str:
    classes: list[str] = []
    corruptions: list[str] = []
    for r in results:
        classes += [c for c in r.get("IoU", {}) if c not in classes]
        corruptions += [c for c in (r.get("robustness") or {}).get("corruptions", {}) if c not in corruptions]
    robust = (["robust/clean", "robust/mean"] + [f"robust/{c}" for c in corruptions]) if corruptions else []
    columns = ["name", "group", "seed", "variant", "config", "changes", "params", "gflops", "infer_size",
               "infer_batch", "infer_ms", "infer_images_per_s", "train_micro_batch", "train_ms",
               "train_images_per_s", "train_memory_bytes", "peak_rss_bytes", "mIoU", "aAcc", "mAcc",
               "total_steps", "batch_size", "crop_size", "train_call_s", "finished_at", "machine",
               "pretrain_top1"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns + [f"IoU/{c}" for c in classes] + robust)
    for r in results:
        row = []
        for c in columns:
            value = r.get(c)
            if c == "changes":
                value = json.dumps(value, sort_keys=True)
            elif c in ("infer_size", "crop_size"):
                value = "x".join(map(str, value))
            elif c == "machine":
                value = machine_line(value)
            elif c == "pretrain_top1":
                value = (r.get("pretrain") or {}).get("top1")
            row.append("" if value is None else value)
        row += ["" if r.get("IoU", {}).get(c) is None else r["IoU"][c] for c in classes]
        if robust:
            report = r.get("robustness") or {}
            values = [(report.get("clean") or {}).get("mIoU"), report.get("mean")]
            values += [report.get("corruptions", {}).get(c, {}).get("mean") for c in corruptions]
            row += ["" if v is None else v for v in values]
        writer.writerow(row)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# The plot


def _style(variant: str, index: int) -> tuple[str, str]:
    if variant in VARIANT_STYLE:
        return VARIANT_STYLE[variant]
    markers = [m for m, _ in VARIANT_STYLE.values()]
    return markers[index % len(markers)], "#5a5a5a"


_LABEL_OFFSETS = [(8, 0), (-8, 0), (0, 9), (0, -9), (12, 12), (12, -12), (-12, 12), (-12, -12),
                  (24, 20), (24, -20), (-24, 20), (-24, -20)]  # points from the marker


def _note(ax: Any, text: str, xy: tuple[float, float], dx: int, dy: int) -> Any:
    """``text`` at (dx, dy) points from ``xy``; set off diagonally, with a thin line to it."""
    leader = {"arrowstyle": "-", "color": "#8c8c8c", "linewidth": 0.7, "shrinkA": 1,
              "shrinkB": 6} if dx and dy else None
    return ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", fontsize=9,
                       color="#282828", ha="left" if dx > 0 else "right" if dx < 0 else "center",
                       va="center" if dy == 0 else "bottom" if dy > 0 else "top",
                       arrowprops=leader)


def _label(ax: Any, renderer: Any, text: str, xy: tuple[float, float], placed: list[Any]) -> None:
    """The point's name beside it, at the first offset where it stays inside the axes and
    covers no other label or marker (none free: the first offset)."""
    from matplotlib.text import Text

    def text_box(note: Any) -> Any:  # the text alone, not its leader line
        note.update_positions(renderer)
        return Text.get_window_extent(note, renderer)

    for dx, dy in _LABEL_OFFSETS:
        note = _note(ax, text, xy, dx, dy)
        box = text_box(note)
        if ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1) \
                and not any(box.overlaps(b) for b in placed):
            placed.append(box)
            return
        note.remove()
    placed.append(text_box(_note(ax, text, xy, *_LABEL_OFFSETS[0])))


def _panel(ax: Any, results: Sequence[Mapping[str, Any]], x_key: str, x_scale: float,
           x_label: str, title: str, variants: list[str]) -> None:
    from matplotlib.transforms import Bbox
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel("mIoU (%)")
    points = [(r, r.get(x_key), r.get("mIoU")) for r in results]
    points = [(r, x * x_scale, 100 * y) for r, x, y in points
              if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not points:
        ax.text(0.5, 0.5, "no finished points with this value", ha="center", va="center",
                transform=ax.transAxes)
        return
    ax.grid(True, color="#e4e4e4")
    ax.set_axisbelow(True)
    line = sorted((p for p in points if set(p[0].get("changes", {})) <= set(VARIANT_KEYS)),
                  key=lambda p: p[1])
    if len(line) > 1:
        ax.plot([x for _, x, _ in line], [y for _, _, y in line], color="#969696", linewidth=2,
                zorder=1)
    mixed = any(r.get("pretrain") for r, _, _ in points)  # from scratch beside pretrained
    for r, x, y in points:
        marker, colour = _style(r["variant"], variants.index(r["variant"]))
        if r.get("mIoU_sd") is not None:  # over seeds: ± one standard deviation
            ax.errorbar([x], [y], yerr=[100 * r["mIoU_sd"]], color=colour, capsize=4,
                        linewidth=1.2, zorder=1.5)
        face = "white" if mixed and r.get("pretrain") is None else colour  # hollow: from scratch
        ax.scatter([x], [y], marker=marker, s=90, color=face, edgecolors=colour if face == "white"
                   else "#333333", linewidths=1.5, zorder=2)
    ax.margins(0.15, 0.2)
    ax.autoscale_view()
    ax.set_xlim(left=max(0.0, ax.get_xlim()[0]))  # the limits are final before labels are placed
    renderer = ax.figure.canvas.get_renderer()
    placed = [Bbox.from_bounds(px - 7, py - 7, 14, 14)  # the markers
              for px, py in ax.transData.transform([(x, y) for _, x, y in points])]
    for r, x, y in points:
        _label(ax, renderer, r["name"], (x, y), placed)


def plot(results: Sequence[Mapping[str, Any]], path: pathlib.Path, title: str) -> None:
    """mIoU against GFLOPs and against parameters, side by side, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    figure.subplots_adjust(left=0.06, right=0.98, top=0.86, bottom=0.2, wspace=0.16)
    figure.suptitle(title, fontsize=12)
    seeded = _seeded(results)
    if seeded:
        results = over_seeds(results)
    sizes = sorted({"x".join(map(str, r["infer_size"])) for r in results})
    variants = sorted({r["variant"] for r in results})
    _panel(left, results, "gflops", 1.0, f"GFLOPs per image (XLA cost analysis, {', '.join(sizes)})",
           "mIoU vs GFLOPs", variants)
    _panel(right, results, "params", 1e-6, "parameters (M)", "mIoU vs parameters", variants)
    handles = [Line2D([], [], linestyle="none", marker=m, markersize=9, color=c,
                      markeredgecolor="#333333", label=f"SegFormer-{v.upper()}")
               for i, v in enumerate(variants) for m, c in [_style(v, i)]]
    if any(r.get("pretrain") for r in results):
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=9, color="white",
                              markeredgecolor="#5a5a5a", label="hollow: from scratch; filled: "
                              "encoder pretrained"))
    if seeded:
        handles.append(Line2D([], [], color="#5a5a5a", label="bars: ± 1 sd over seeds"))
    if sum(set(r.get("changes", {})) <= set(VARIANT_KEYS) for r in results) > 1:
        handles.append(Line2D([], [], color="#969696", linewidth=2,
                              label="points that differ in their variant only; "
                                    "the other points are ablations, labelled"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                  fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())


def write_all(results: Sequence[Mapping[str, Any]], workdir: pathlib.Path, sweep_file: Any,
              measure: Mapping[str, Any]) -> None:
    """results.json, results.csv, results.md and plot.png in ``workdir`` (and, when points
    measured robustness, its tables and plot in ``workdir/robustness``)."""
    name = pathlib.Path(sweep_file).name
    data = {"sweep": str(sweep_file), "measure": dict(measure), "points": list(results)}
    atomic_write(workdir / "results.json", (json.dumps(data, indent=2) + "\n").encode())
    atomic_write(workdir / "results.csv", csv_text(results).encode())
    atomic_write(workdir / "results.md", markdown(results, name).encode())
    reports = [r["robustness"] for r in results if r.get("robustness")]
    if reports:  # the paper's layout, one row per point, and the severity plot per point
        from segformer_jax.robustness import write
        write(workdir / "robustness", reports)
    plot(results, workdir / "plot.png",
         f"{name}: mIoU against compute and size  ·  {machine_line(results[0]['machine'])}")
