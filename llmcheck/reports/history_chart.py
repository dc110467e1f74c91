"""The history page's chart of one series over runs: hand-built SVG, as the A/B ratio plot is.

Per run a dot at the median joined by a line, a whisker for the interval; a step is a dashed red
line before its first run with the two levels either side, a creep the first and last levels; the
machine calibration of the same runs in a panel below. xml.etree builds the SVG, so every text node
is escaped; colours are presentation attributes, which the page's Content-Security-Policy allows.
pygal has no whisker or band primitive and would need its scripts scrubbed.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

from llmcheck.stats import change_points as cp

W, LEFT, RIGHT, TOP, MAIN_H, CAL_H, GAP, BOTTOM = 760, 64, 16, 14, 200, 70, 26, 34


def _scale(lo: float, hi: float, top: float, height: float):
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    return lambda v: top + height * (hi - v) / (hi - lo), lo, hi


def _line(parent, x1: float, y1: float, x2: float, y2: float, colour: str, **attrs) -> None:
    ends = {"x1": f"{x1:.1f}", "y1": f"{y1:.1f}", "x2": f"{x2:.1f}", "y2": f"{y2:.1f}"}
    ET.SubElement(parent, "line", ends, stroke=colour, **{k.replace("_", "-"): v for k, v in attrs.items()})


def _text(parent, x: float, y: float, text: str, **attrs) -> None:
    el = ET.SubElement(parent, "text", x=f"{x:.1f}", y=f"{y:.1f}", fill=attrs.pop("fill", "#57606a"))
    el.attrib.update({"font-size": "11", **{k.replace("_", "-"): v for k, v in attrs.items()}})
    el.text = text


def chart(s: Any, runs: list[dict[str, Any]]) -> str:
    """The series over runs (median dots joined, interval whiskers, shifts dashed in red), and the
    calibration panel below when the runs recorded one."""
    cal = [p.calibration for p in s.points if p.calibration]
    height = TOP + MAIN_H + (GAP + CAL_H if cal else 0) + BOTTOM
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {W} {height}", role="img")
    ET.SubElement(svg, "title").text = f"{s.item} {s.name} over {len(runs)} runs"
    n = len(runs)
    x = lambda run: LEFT + (W - LEFT - RIGHT) * (run + 0.5) / n  # noqa: E731
    values = [v for p in s.points for v in (p.median, p.low, p.high) if v]
    y, lo, hi = _scale(min(values), max(values), TOP, MAIN_H)
    _frame(svg, TOP, MAIN_H, y, lo, hi, "ms")
    for shift in s.shifts:
        _shift(svg, s, shift, x, y)
    ET.SubElement(
        svg,
        "polyline",
        points=" ".join(f"{x(p.run):.1f},{y(p.median):.1f}" for p in s.points),
        fill="none",
        stroke="#1f77b4",
        **{"stroke-width": "1.5"},
    )
    for p in s.points:
        if p.low is not None:
            _line(svg, x(p.run), y(p.low), x(p.run), y(p.high), "#1f77b4", stroke_opacity="0.5")
        dot = ET.SubElement(svg, "circle", cx=f"{x(p.run):.1f}", cy=f"{y(p.median):.1f}", r="3.5", fill="#1f2328")
        interval = f" [{p.low:.4g}, {p.high:.4g}]" if p.low is not None else ""
        ET.SubElement(dot, "title").text = f"run {p.run + 1} ({runs[p.run]['label']}): {p.median:.4g} ms{interval}"
    bottom = TOP + MAIN_H
    if cal:
        top = TOP + MAIN_H + GAP
        yc, clo, chi = _scale(min(cal), max(cal), top, CAL_H)
        _frame(svg, top, CAL_H, yc, clo, chi, "ms")
        _text(svg, LEFT + 4, top - 6, "machine calibration (calibration_ms): a fixed matmul in the same processes")
        ET.SubElement(
            svg,
            "polyline",
            points=" ".join(f"{x(p.run):.1f},{yc(p.calibration):.1f}" for p in s.points if p.calibration),
            fill="none",
            stroke="#9a6700",
            **{"stroke-width": "1.5"},
        )
        bottom = top + CAL_H
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):
        _text(svg, x(i), bottom + 14, str(i + 1), text_anchor="middle")
    _text(svg, LEFT, height - 4, "run (oldest first; the table above names each run's commit)")
    return ET.tostring(svg, encoding="unicode")


def _frame(svg, top: float, height: float, y, lo: float, hi: float, unit: str) -> None:
    box = {"x": str(LEFT), "y": str(top), "width": str(W - LEFT - RIGHT), "height": str(height)}
    ET.SubElement(svg, "rect", box, fill="white", stroke="#d0d7de")
    for v in (lo + (hi - lo) * f for f in (0.1, 0.5, 0.9)):
        _text(svg, LEFT - 4, y(v) + 4, f"{v:.3g} {unit}", text_anchor="end")


def _shift(svg, s: Any, shift: cp.Shift, x, y) -> None:
    """A step: a dashed red line before its first run, and the levels either side; a creep: the
    first and last levels."""
    runs = [p.run for p in s.points]
    at = runs[shift.index]
    k = min(s.window, shift.index, len(runs) - shift.index)
    if shift.kind == "step":
        edge = (x(runs[shift.index - 1]) + x(at)) / 2
        _line(svg, edge, TOP, edge, TOP + MAIN_H, "#cf222e", stroke_dasharray="6 4", stroke_width="1.5")
        spans = [
            (runs[shift.index - k], runs[shift.index - 1], shift.before),
            (at, runs[shift.index + k - 1], shift.after),
        ]
    else:
        spans = [(runs[0], runs[k - 1], shift.before), (runs[-k], runs[-1], shift.after)]
    for a, b, level in spans:
        _line(svg, x(a) - 6, y(level), x(b) + 6, y(level), "#cf222e", stroke_opacity="0.6")
    label = f"{shift.change:+.1%}" + (" creep" if shift.kind == "creep" else "")
    _text(svg, x(at) + 4, TOP + 12, label, fill="#cf222e", font_weight="600")
