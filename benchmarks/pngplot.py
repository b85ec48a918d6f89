"""A tiny line/point plotter writing PNG with Pillow (matplotlib is not a runtime dependency).

Used by the benchmarks for their figures. Supports a linear or log x axis,
lines, points with vertical error bars, a legend and axis labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont


@dataclass
class Series:
    x: list
    y: list
    label: str
    color: tuple = (31, 119, 180)
    kind: str = "line"  # "line", "points" or "step"
    yerr_lo: list | None = None  # lower error bar end (absolute y values)
    yerr_hi: list | None = None
    width: int = 3
    dashed: bool = False


@dataclass
class Axes:
    xlim: tuple
    ylim: tuple
    xlabel: str
    ylabel: str
    title: str = ""
    xlog: bool = False
    xticks: list | None = None
    yticks: list | None = None
    hlines: list = field(default_factory=list)  # (y, color)
    vlines: list = field(default_factory=list)  # (x, color) or (x, color, label)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _dashed_line(draw, p0, p1, color, width, dash=10, gap=7):
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    t = 0.0
    while t < length:
        t1 = min(t + dash, length)
        draw.line([(x0 + ux * t, y0 + uy * t), (x0 + ux * t1, y0 + uy * t1)], fill=color, width=width)
        t = t1 + gap


def plot(path, axes: Axes, series: list[Series], size=(1100, 720)) -> None:
    """Draw ``series`` on ``axes`` into the PNG file ``path``."""
    width, height = size
    left, right, top, bottom = 110, 30, 60 if axes.title else 30, 90
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    f_tick, f_label, f_title, f_legend = _font(18), _font(21), _font(23), _font(18)
    x0, x1 = axes.xlim
    y0, y1 = axes.ylim
    fx = (lambda v: math.log10(v)) if axes.xlog else (lambda v: v)
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (fx(x) - fx(x0)) / (fx(x1) - fx(x0)) * pw

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    grid = (225, 225, 225)
    xticks = axes.xticks or [x0 + i * (x1 - x0) / 5 for i in range(6)]
    yticks = axes.yticks or [y0 + i * (y1 - y0) / 5 for i in range(6)]
    for t in xticks:
        draw.line([(px(t), top), (px(t), top + ph)], fill=grid, width=1)
        label = f"{t:g}"
        w = draw.textlength(label, font=f_tick)
        draw.text((px(t) - w / 2, top + ph + 8), label, fill="black", font=f_tick)
    for t in yticks:
        draw.line([(left, py(t)), (left + pw, py(t))], fill=grid, width=1)
        label = f"{t:g}"
        w = draw.textlength(label, font=f_tick)
        draw.text((left - w - 10, py(t) - 10), label, fill="black", font=f_tick)
    for y, color in axes.hlines:
        _dashed_line(draw, (left, py(y)), (left + pw, py(y)), color, 1, 6, 6)
    for line in axes.vlines:  # (x, color) or (x, color, label)
        x, color = line[0], line[1]
        _dashed_line(draw, (px(x), top), (px(x), top + ph), color, 1, 6, 6)
        if len(line) > 2:
            draw.text((px(x) + 4, top + 4), line[2], fill=color, font=f_tick)
    draw.rectangle([left, top, left + pw, top + ph], outline="black", width=2)

    for s in series:
        pts = [(px(x), py(y)) for x, y in zip(s.x, s.y) if x0 <= x <= x1 and math.isfinite(y)]
        if s.kind in ("line", "step") and len(pts) > 1:
            if s.kind == "step":
                stepped = [pts[0]]
                for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
                    stepped += [(xb, ya), (xb, yb)]
                pts = stepped
            if s.dashed:
                for a, b in zip(pts, pts[1:]):
                    _dashed_line(draw, a, b, s.color, s.width)
            else:
                draw.line(pts, fill=s.color, width=s.width, joint="curve")
        if s.kind == "points":
            for i, (x, y) in enumerate(zip(s.x, s.y)):
                if not (x0 <= x <= x1 and math.isfinite(y)):
                    continue
                cx, cy = px(x), py(y)
                if s.yerr_lo is not None and s.yerr_hi is not None:
                    lo, hi = py(s.yerr_lo[i]), py(s.yerr_hi[i])
                    draw.line([(cx, lo), (cx, hi)], fill=s.color, width=2)
                    draw.line([(cx - 5, lo), (cx + 5, lo)], fill=s.color, width=2)
                    draw.line([(cx - 5, hi), (cx + 5, hi)], fill=s.color, width=2)
                r = 5
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=s.color, outline="black")

    # legend (lower right)
    lh = 28
    lw = max(draw.textlength(s.label, font=f_legend) for s in series) + 70
    lx, ly = left + pw - lw - 12, top + ph - lh * len(series) - 14
    draw.rectangle([lx, ly, lx + lw, ly + lh * len(series) + 6], fill="white", outline=(150, 150, 150))
    for i, s in enumerate(series):
        yy = ly + 6 + i * lh + lh / 2 - 3
        if s.kind == "points":
            draw.ellipse([lx + 22, yy - 5, lx + 32, yy + 5], fill=s.color, outline="black")
        elif s.dashed:
            _dashed_line(draw, (lx + 8, yy), (lx + 48, yy), s.color, s.width, 8, 5)
        else:
            draw.line([(lx + 8, yy), (lx + 48, yy)], fill=s.color, width=s.width)
        draw.text((lx + 58, yy - 11), s.label, fill="black", font=f_legend)

    w = draw.textlength(axes.xlabel, font=f_label)
    draw.text((left + pw / 2 - w / 2, height - 40), axes.xlabel, fill="black", font=f_label)
    if axes.title:
        w = draw.textlength(axes.title, font=f_title)
        draw.text((left + pw / 2 - w / 2, 16), axes.title, fill="black", font=f_title)
    # rotated y label
    w = int(draw.textlength(axes.ylabel, font=f_label)) + 4
    label = Image.new("RGBA", (w, 30), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 2), axes.ylabel, fill="black", font=f_label)
    label = label.rotate(90, expand=True)
    img.paste(label, (14, int(top + ph / 2 - w / 2)), label)
    img.save(path)
