"""Charts as PNG bytes, for reports that embed their images (no files beside the page).

Each function draws one chart on its own `matplotlib.figure.Figure` (never pyplot's global
figure state, so concurrent or repeated calls cannot draw into each other) and returns the
PNG. Labels are plain strings; colours are assigned per series name in call order, from a
palette readable on white and in greyscale.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIZE = (7.5, 4.2)  # inches; at DPI 110 about 820 x 460 pixels
DPI = 110
HIGHLIGHT = "#d62728"


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> bytes:
    """One line per series of (x, y) points, with a legend; empty series are left out."""
    figure, axes = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, label=name, linewidth=1.6, marker="." if len(xs) < 30 else None)
    if logy:
        axes.set_yscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if any(series.values()):
        axes.legend(fontsize="small", ncols=2)
    return _png(figure)


def scatter_chart(
    points: Mapping[str, tuple[float, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    highlight: Iterable[str] = (),
    highlight_label: str = "highlighted",
) -> bytes:
    """Labelled points; the `highlight`ed ones drawn large in red and joined by a line in x
    order (e.g. a Pareto front)."""
    figure, axes = _figure()
    chosen = [name for name in highlight if name in points]
    for name, (x, y) in points.items():
        special = name in chosen
        axes.scatter([x], [y], s=70 if special else 40, zorder=3,
                     color=HIGHLIGHT if special else "#1f77b4")  # fmt: skip
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
    if chosen:
        front = sorted((points[name] for name in chosen), key=lambda point: point[0])
        xs, ys = zip(*front, strict=True)
        axes.plot(xs, ys, color=HIGHLIGHT, linestyle="--", linewidth=1, label=highlight_label)
        axes.legend(fontsize="small")
    if logx:
        axes.set_xscale("log")
    axes.margins(0.15)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(figure)


def bar_chart(
    values: Mapping[str, float],
    *,
    title: str,
    ylabel: str,
    highlight: Iterable[str] = (),
) -> bytes:
    """One bar per name, value printed on top; `highlight`ed bars in red."""
    figure, axes = _figure()
    chosen = set(highlight)
    names = list(values)
    colours = [HIGHLIGHT if name in chosen else "#1f77b4" for name in names]
    bars = axes.bar(names, [values[name] for name in names], color=colours, zorder=3)
    axes.bar_label(bars, fmt="%.0f", fontsize=9)
    axes.set(title=title, ylabel=ylabel)
    axes.margins(y=0.12)
    return _png(figure)
