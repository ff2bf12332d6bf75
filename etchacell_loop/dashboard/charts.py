"""Small charts drawn on the server as inline SVG.

Why not a JavaScript charting library: the pages must work without a build step, load fast on a
slow link, print, and show the same thing in every browser; the few plots an operator needs (a count
per day, a histogram, a figure per model version) are bars and lines. Every label passes through
:func:`markupsafe.escape`, so a chart is as safe to embed as any other escaped text. Each bar carries
a ``<title>``, which browsers show as a tooltip, so exact values are one hover away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#3566a8", "#d9822b", "#3d9a5b", "#b8434a", "#7a5aa6")


@dataclass(frozen=True)
class Frame:
    """The drawing area inside an SVG of ``width`` by ``height`` pixels, margins for the axes."""

    width: int = 720
    height: int = 220
    left: int = 48
    right: int = 12
    top: int = 12
    bottom: int = 36

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float, top_value: float) -> float:
        return self.top + self.plot_height * (1.0 - value / top_value if top_value else 1.0)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    label: str,
    unit: str = "",
    line: Sequence[float] | None = None,
    line_label: str = "",
    marker_at: int | None = None,
    marker_label: str = "",
    frame: Frame = Frame(),
) -> Markup:
    """Bars for ``values`` (one per label), optionally a line over them on its own scale (e.g.
    volunteers over classifications) and a vertical marker before bar ``marker_at``."""
    if not values:
        return _empty(label, frame)
    top = nice_ceiling(max(values))
    step = frame.plot_width / len(values)
    parts = [_open(label, frame), *_y_axis(top, frame)]
    for i, (name, value) in enumerate(zip(labels, values, strict=True)):
        x = frame.left + i * step
        y = frame.y(value, top)
        parts.append(
            f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{y:.1f}" width="{max(step * 0.8, 1):.1f}" '
            f'height="{frame.top + frame.plot_height - y:.1f}" fill="{PALETTE[0]}">'
            f"<title>{escape(name)}: {_number(value)}{escape(unit)}</title></rect>"
        )
    parts.extend(_x_labels(labels, step, frame))
    if line:
        parts.append(_line(line, labels, step, frame, line_label))
    if marker_at is not None and 0 <= marker_at <= len(values):
        x = frame.left + marker_at * step
        parts.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{frame.top + frame.plot_height}" '
            f'stroke="{PALETTE[3]}" stroke-dasharray="4 3" stroke-width="2"/>'
            f'<text x="{x + 4:.1f}" y="{frame.top + 12}" fill="{PALETTE[3]}" font-size="11">'
            f"{escape(marker_label)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    label: str,
    top: float | None = None,
    frame: Frame = Frame(),
) -> Markup:
    """One group of bars per category (e.g. per model version), one bar per series, with a legend;
    a missing value leaves a gap."""
    known = [v for values in series.values() for v in values if v is not None]
    if not categories or not known:
        return _empty(label, frame)
    ceiling = top or nice_ceiling(max(known))
    group = frame.plot_width / len(categories)
    bar = group * 0.8 / max(len(series), 1)
    parts = [_open(label, frame), *_y_axis(ceiling, frame)]
    for s, (name, values) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(values):
            if value is None:
                continue
            x = frame.left + i * group + group * 0.1 + s * bar
            y = frame.y(min(value, ceiling), ceiling)
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{frame.top + frame.plot_height - y:.1f}" fill="{colour}">'
                f"<title>{escape(categories[i])} {escape(name)}: {_number(value)}</title></rect>"
            )
        parts.append(
            f'<rect x="{frame.left + 8 + s * 150}" y="{frame.height - 12}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{frame.left + 22 + s * 150}" y="{frame.height - 3}" font-size="11">{escape(name)}</text>'
        )
    parts.extend(_x_labels(categories, group, frame))
    parts.append("</svg>")
    return Markup("".join(parts))


def nice_ceiling(value: float) -> float:
    """The next 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (an axis top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _open(label: str, frame: Frame) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {frame.width} {frame.height}" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
    )


def _empty(label: str, frame: Frame) -> Markup:
    return Markup(
        f'{_open(label, frame)}<text x="{frame.width / 2}" y="{frame.height / 2}" text-anchor="middle" '
        f'fill="#777" font-size="13">no data yet</text></svg>'
    )


def _y_axis(top: float, frame: Frame) -> list[str]:
    parts = []
    for k in range(5):
        value = top * k / 4
        y = frame.y(value, top)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
            f"{_number(value)}</text>"
        )
    return parts


def _x_labels(labels: Sequence[str], step: float, frame: Frame) -> list[str]:
    every = max(1, math.ceil(len(labels) * 70 / frame.plot_width))  # about 70 px per label
    y = frame.top + frame.plot_height + 14
    return [
        f'<text x="{frame.left + i * step + step / 2:.1f}" y="{y}" text-anchor="middle" font-size="11" '
        f'fill="#555">{escape(name)}</text>'
        for i, name in enumerate(labels)
        if i % every == 0
    ]


def _line(values: Sequence[float], labels: Sequence[str], step: float, frame: Frame, label: str) -> str:
    """The line on its own scale, with a dot at each value: a polyline through a single point draws
    nothing, so without the dots one day of data (a new project, the demo) shows no line at all."""
    top = nice_ceiling(max(values))
    xy = [(frame.left + i * step + step / 2, frame.y(v, top)) for i, v in enumerate(values)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{PALETTE[1]}" stroke="#fff" stroke-width="1.5">'
        f"<title>{escape(name)} {escape(label)}: {_number(value)}</title></circle>"
        for (x, y), name, value in zip(xy, labels, values, strict=True)
    )
    return (
        f'<polyline class="line" points="{points}" fill="none" stroke="{PALETTE[1]}" stroke-width="2">'
        f"<title>{escape(label)}</title></polyline>{dots}"
        f'<text x="{frame.width - frame.right}" y="{frame.top + 10}" text-anchor="end" font-size="11" '
        f'fill="{PALETTE[1]}">{escape(label)} (max {_number(max(values))})</text>'
    )


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
