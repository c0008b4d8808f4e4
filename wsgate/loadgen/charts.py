"""Charts and pages for the load generator's HTML report: inline SVG, no plotting library.

Owns `svg_chart` (line charts; HDR percentile curves are drawn on a "nines" axis, where 90 %,
99 % and 99.9 % are equally spaced), `html_table` and `html_page` (one self-contained file,
no script, no external asset). Every piece of text is HTML-escaped. No I/O here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_W, _H, _PAD = 720, 300, 48


def _nines(percentile: float) -> float:
    """The x position of a percentile on an HDR plot: 90% -> 1, 99% -> 2, 99.9% -> 3."""
    return min(-math.log10(max(1 - percentile / 100, 1e-5)), 5.0)


def svg_chart(
    series: dict[str, list[tuple[float, float]]], *, x_label: str, y_label: str, percentiles: bool
) -> str:
    """One line chart as an inline SVG string; x is in "nines" when `percentiles`."""
    shown = {name: pts for name, pts in series.items() if pts}
    if not shown:
        return "<p><em>no data</em></p>"

    def x_of(x: float) -> float:
        return _nines(x) if percentiles else x

    xs = [x_of(x) for pts in shown.values() for x, _ in pts]
    ys = [y for pts in shown.values() for _, y in pts]
    x_max = max(*xs, 1e-09)
    y_min, y_max = min(*ys, 0.0), max(*ys, 1e-09) * 1.05

    def sx(x: float) -> float:
        return _PAD + (x_of(x) / x_max) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD + 8 - ((y - y_min) / (y_max - y_min)) * (_H - 2 * _PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}">']
    parts.append(_axes(x_label, y_label, (y_min, y_max), sy))
    parts += _x_ticks(x_max, sx, percentiles=percentiles)
    for i, (name, pts) in enumerate(shown.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{_W - 190}" y="{20 + 16 * i}" fill="{colour}" font-size="12">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    x_label: str, y_label: str, y_range: tuple[float, float], sy: Callable[[float], float]
) -> str:
    bottom, right = _H - _PAD + 8, _W - _PAD
    out = [
        f'<line x1="{_PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{_PAD}" y1="{bottom}" x2="{_PAD}" y2="16" stroke="#333"/>',
        (
            f'<text x="{_W / 2}" y="{_H - 6}" font-size="12" text-anchor="middle">'
            f"{html.escape(x_label)}</text>"
        ),
        (
            f'<text x="12" y="{_H / 2}" font-size="12" transform="rotate(-90 12 {_H / 2})" '
            f'text-anchor="middle">{html.escape(y_label)}</text>'
        ),
    ]
    y_min, y_max = y_range
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        y = sy(value)
        out.append(f'<line x1="{_PAD}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{_PAD - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{value:.3g}</text>"
        )
    return "".join(out)


def _x_ticks(x_max: float, sx: Callable[[float], float], *, percentiles: bool) -> list[str]:
    bottom = _H - _PAD + 8
    if percentiles:
        labels = {0.0: "0%", 90.0: "90%", 99.0: "99%", 99.9: "99.9%", 99.99: "99.99%"}
        ticks = [(p, text) for p, text in labels.items() if _nines(p) <= x_max + 1e-9]
    else:
        step = max(1, math.ceil(x_max / 10))
        ticks = [(float(t), f"{t}") for t in range(0, int(x_max) + 1, step)]
    return [
        f'<text x="{sx(x):.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{text}</text>'
        for x, text in ticks
    ]


def html_table(header: list[str], rows: list[list[object]]) -> str:
    """A plain HTML table."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page: a title and (heading, html) sections."""
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:900px}"
        "table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f4f4f4}pre{background:#f8f8f8;padding:0.5em}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
