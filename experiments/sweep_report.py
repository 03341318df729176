"""A sweep's results as tables (JSON, CSV, Markdown) and a plot (PNG, drawn with PIL).

The plot has the two panels of the paper's Figure 1: mIoU against GFLOPs and against
parameters, one marker shape and colour per variant, every point labelled with its name;
the points that differ from the base config in their variant only are joined by a line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

MAX_CLASS_COLUMNS = 20  # a per-class IoU table in results.md up to this many classes
VARIANT_STYLE = {  # marker, RGB
    "b0": ("circle", (31, 119, 180)), "b1": ("square", (255, 127, 14)),
    "b2": ("triangle", (44, 160, 44)), "b3": ("diamond", (214, 39, 40)),
    "b4": ("triangle_down", (148, 103, 189)), "b5": ("pentagon", (140, 86, 75)),
}
VARIANT_KEYS = ("model.variant", "config", "model.init")  # a variant (and its backbone weights)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    for r in results:
        classes += [c for c in r.get("IoU", {}) if c not in classes]
    columns = ["name", "variant", "config", "changes", "params", "gflops", "infer_size",
               "infer_batch", "infer_ms", "infer_images_per_s", "train_micro_batch", "train_ms",
               "train_images_per_s", "train_memory_bytes", "peak_rss_bytes", "mIoU", "aAcc", "mAcc",
               "total_steps", "batch_size", "crop_size", "train_call_s", "finished_at", "machine"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns + [f"IoU/{c}" for c in classes])
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
            row.append("" if value is None else value)
        row += ["" if r.get("IoU", {}).get(c) is None else r["IoU"][c] for c in classes]
        writer.writerow(row)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# The plot


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if not hi > lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # old Pillow / no FreeType: bitmap
        return PIL.ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def _marker(draw: PIL.ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float,
            colour: tuple[int, int, int]) -> None:
    outline = tuple(int(c * 0.6) for c in colour)
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=outline, width=2)
        return
    if shape == "square":
        draw.rectangle((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=colour,
                       outline=outline, width=2)
        return
    sides, rotation = {"triangle": (3, 90), "diamond": (4, 90), "triangle_down": (3, -90),
                       "pentagon": (5, 90)}[shape]
    points = [(x + r * math.cos(math.radians(rotation + i * 360 / sides)),
               y - r * math.sin(math.radians(rotation + i * 360 / sides))) for i in range(sides)]
    draw.polygon(points, fill=colour, outline=outline, width=2)


def _style(variant: str, index: int) -> tuple[str, tuple[int, int, int]]:
    if variant in VARIANT_STYLE:
        return VARIANT_STYLE[variant]
    shapes = ["circle", "square", "triangle", "diamond", "triangle_down", "pentagon"]
    return shapes[index % len(shapes)], (90, 90, 90)


def _overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]]) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def _panel(image: PIL.Image.Image, box: tuple[int, int, int, int], results: Sequence[Mapping[str, Any]],
           x_key: str, x_scale: float, x_label: str, y_label: str, title: str) -> None:
    draw = PIL.ImageDraw.Draw(image)
    font, small, big = _font(15), _font(13), _font(17)
    left, top, right, bottom = box
    points = [(r, r.get(x_key), r.get("mIoU")) for r in results]
    points = [(r, x * x_scale, 100 * y) for r, x, y in points
              if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    draw.text(((left + right) / 2, top - 30), title, fill=(0, 0, 0), font=big, anchor="mm")
    draw.rectangle(box, outline=(0, 0, 0), width=1)
    if not points:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no finished points with this value",
                  fill=(0, 0, 0), font=font, anchor="mm")
        return
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    pad_x = (max(xs) - min(xs)) * 0.12 or max(abs(max(xs)) * 0.2, 1e-3)
    pad_y = (max(ys) - min(ys)) * 0.15 or 2.0
    x_ticks = nice_ticks(max(min(xs) - pad_x, 0.0), max(xs) + pad_x)
    y_ticks = nice_ticks(max(min(ys) - pad_y, 0.0), min(max(ys) + pad_y, 100.0))
    x0, x1 = min(x_ticks[0], min(xs) - pad_x / 2), max(x_ticks[-1], max(xs) + pad_x / 2)
    y0, y1 = min(y_ticks[0], min(ys) - pad_y / 2), max(y_ticks[-1], max(ys) + pad_y / 2)
    px = lambda v: left + (v - x0) / (x1 - x0) * (right - left)  # noqa: E731
    py = lambda v: bottom - (v - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
    for t in x_ticks:
        draw.line((px(t), top, px(t), bottom), fill=(228, 228, 228))
        draw.line((px(t), bottom, px(t), bottom + 5), fill=(0, 0, 0))
        draw.text((px(t), bottom + 8), _fmt(t), fill=(0, 0, 0), font=small, anchor="mt")
    for t in y_ticks:
        draw.line((left, py(t), right, py(t)), fill=(228, 228, 228))
        draw.line((left - 5, py(t), left, py(t)), fill=(0, 0, 0))
        draw.text((left - 8, py(t)), _fmt(t), fill=(0, 0, 0), font=small, anchor="rm")
    draw.rectangle(box, outline=(0, 0, 0), width=1)
    draw.text(((left + right) / 2, bottom + 32), x_label, fill=(0, 0, 0), font=font, anchor="mt")
    label = PIL.Image.new("RGB", (int(font.getlength(y_label)) + 8, 22), (255, 255, 255))
    PIL.ImageDraw.Draw(label).text((4, 2), y_label, fill=(0, 0, 0), font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (left - 62, int((top + bottom) / 2 - label.height / 2)))

    variant_points = sorted((p for p in points if set(p[0].get("changes", {})) <= set(VARIANT_KEYS)),
                            key=lambda p: p[1])
    if len(variant_points) > 1:
        draw.line([(px(x), py(y)) for _, x, y in variant_points], fill=(150, 150, 150), width=2)
    variants = sorted({p[0]["variant"] for p in points})
    placed: list[tuple[float, ...]] = []
    for r, x, y in points:
        shape, colour = _style(r["variant"], variants.index(r["variant"]))
        _marker(draw, shape, px(x), py(y), 8, colour)
        placed.append((px(x) - 9, py(y) - 9, px(x) + 9, py(y) + 9))
    for r, x, y in points:
        text = r["name"]
        width, height = small.getlength(text), 14
        cx, cy = px(x), py(y)
        candidates = [(cx + 12, cy - height / 2), (cx - 12 - width, cy - height / 2),
                      (cx - width / 2, cy - 12 - height), (cx - width / 2, cy + 12),
                      (cx + 12, cy - 18 - height / 2), (cx + 12, cy + 18 - height / 2),
                      (cx - 12 - width, cy - 18 - height / 2), (cx - 12 - width, cy + 18 - height / 2)]
        chosen = next(((tx, ty) for tx, ty in candidates
                       if left < tx and tx + width < right and top < ty and ty + height < bottom
                       and not _overlaps((tx, ty, tx + width, ty + height), placed)), candidates[0])
        placed.append((chosen[0], chosen[1], chosen[0] + width, chosen[1] + height))
        draw.text(chosen, text, fill=(40, 40, 40), font=small)


def plot(results: Sequence[Mapping[str, Any]], path: pathlib.Path, title: str) -> None:
    """mIoU against GFLOPs and against parameters, side by side, as a PNG."""
    width, height = 1500, 680
    image = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    draw.text((width / 2, 22), title, fill=(0, 0, 0), font=_font(19), anchor="mm")
    sizes = sorted({"x".join(map(str, r["infer_size"])) for r in results})
    _panel(image, (100, 90, 720, 560), results, "gflops", 1.0,
           f"GFLOPs per image (XLA cost analysis, {', '.join(sizes)})", "mIoU (%)", "mIoU vs GFLOPs")
    _panel(image, (840, 90, 1460, 560), results, "params", 1e-6, "parameters (M)", "mIoU (%)",
           "mIoU vs parameters")
    variants = sorted({r["variant"] for r in results})
    x = 100
    font = _font(15)
    for i, v in enumerate(variants):
        shape, colour = _style(v, i)
        _marker(draw, shape, x + 8, 640, 8, colour)
        draw.text((x + 22, 640), f"SegFormer-{v.upper()}", fill=(0, 0, 0), font=font, anchor="lm")
        x += 40 + int(font.getlength(f"SegFormer-{v.upper()}"))
    draw.text((x + 10, 640), "(grey line: points that differ in their variant only; "
              "other points are ablations, labelled)", fill=(90, 90, 90), font=_font(13), anchor="lm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _atomic_write(path, buffer.getvalue())


def write_all(results: Sequence[Mapping[str, Any]], workdir: pathlib.Path, sweep_file: Any,
              measure: Mapping[str, Any]) -> None:
    """results.json, results.csv, results.md and plot.png in ``workdir``."""
    name = pathlib.Path(sweep_file).name
    data = {"sweep": str(sweep_file), "measure": dict(measure), "points": list(results)}
    _atomic_write(workdir / "results.json", (json.dumps(data, indent=2) + "\n").encode())
    _atomic_write(workdir / "results.csv", csv_text(results).encode())
    _atomic_write(workdir / "results.md", markdown(results, name).encode())
    plot(results, workdir / "plot.png",
         f"{name}: mIoU against compute and size  ·  {machine_line(results[0]['machine'])}")
