"""The A/B result as HTML: a self-contained page, and the ratio plot the run report shows too.

The ratio plot is hand-built SVG (xml.etree, so every text node is escaped by the serializer):
each pair's ratio HEAD/BASE as a dot, the estimate as a line inside its confidence band, and the
no-change line between the ±threshold lines. pygal, which draws the report's other charts, has
no band primitive and would need its scripts and styles scrubbed; a dozen SVG elements do here.
Colours are SVG presentation attributes, which the report's Content-Security-Policy allows
(``style`` attributes it would block). The page runs no script and loads nothing.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from markupsafe import Markup

from llmcheck.reports import pages
from llmcheck.reports.ab_report import ICONS, headline, process_plan, rounds
from llmcheck.reports.files import atomic_write_text

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 220, 56, 16, 14, 30
EXTRA_CSS = """
.ab-regression { color: var(--fail); font-weight: 600; } .ab-improvement { color: var(--pass); font-weight: 600; }
figure.ab { margin: 6px 0 12px; max-width: 680px; border: 1px solid var(--line); padding: 4px; }
figure.ab svg { width: 100%; height: auto; display: block; }
figure.ab figcaption { font-size: 12.5px; color: #57606a; margin: 2px 4px; }
"""


def ratio_svg(result: dict[str, Any], threshold: float) -> str:
    """Each pair's ratio as a dot, the CI band, the estimate, 1.0 and the ±threshold lines."""
    ratios = [p["ratio"] for p in result["pairs"]]
    est = result["estimate"]
    values = ratios + [1 - threshold, 1 + threshold] + [v for v in (est.get("ci_low"), est.get("ci_high")) if v]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or 0.05
    lo, hi = lo - pad, hi + pad
    x = lambda i: LEFT + (W - LEFT - RIGHT) * (i + 0.5) / max(len(ratios), 1)  # noqa: E731
    y = lambda v: TOP + (H - TOP - BOTTOM) * (hi - v) / (hi - lo)  # noqa: E731
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {W} {H}", role="img")
    ET.SubElement(svg, "title").text = f"{result['id']}: ratio HEAD/BASE per pair; {result['message']}"
    ET.SubElement(
        svg,
        "rect",
        x=str(LEFT),
        y=str(TOP),
        width=str(W - LEFT - RIGHT),
        height=str(H - TOP - BOTTOM),
        fill="white",
        stroke="#d0d7de",
    )
    if est.get("ci_low") is not None:
        ET.SubElement(
            svg,
            "rect",
            x=str(LEFT),
            y=f"{y(est['ci_high']):.1f}",
            width=str(W - LEFT - RIGHT),
            height=f"{y(est['ci_low']) - y(est['ci_high']):.1f}",
            fill="#1f77b4",
            **{"fill-opacity": "0.18"},
        )
    for value, colour, dash, label in (
        (1.0, "#57606a", "", "1.0"),
        (1 + threshold, "#cf222e", "6 4", f"+{threshold:.0%}"),
        (1 - threshold, "#1a7f37", "6 4", f"-{threshold:.0%}"),
    ):
        _hline(svg, y(value), colour, dash, label)
    if est.get("ratio") is not None:
        _hline(svg, y(est["ratio"]), "#1f77b4", "", f"{est['ratio']:.3f}", width="2")
    for i, r in enumerate(ratios):
        dot = ET.SubElement(svg, "circle", cx=f"{x(i):.1f}", cy=f"{y(r):.1f}", r="4", fill="#1f2328")
        ET.SubElement(dot, "title").text = f"pair {i + 1}: {r:.4f}"
    text = ET.SubElement(svg, "text", x=str(LEFT), y=str(H - 8), fill="#57606a", **{"font-size": "11"})
    text.text = f"{len(ratios)} rounds in run order; band: {est.get('confidence', 0.95):.0%} CI of the ratio"
    return ET.tostring(svg, encoding="unicode")


def _hline(svg, ypos: float, colour: str, dash: str, label: str, width: str = "1") -> None:
    attrs = {"stroke-dasharray": dash} if dash else {}
    ET.SubElement(
        svg,
        "line",
        x1=str(LEFT),
        x2=str(W - RIGHT),
        y1=f"{ypos:.1f}",
        y2=f"{ypos:.1f}",
        stroke=colour,
        **{"stroke-width": width},
        **attrs,
    )
    t = ET.SubElement(
        svg, "text", x=str(LEFT - 4), y=f"{ypos + 4:.1f}", fill=colour, **{"font-size": "11", "text-anchor": "end"}
    )
    t.text = label


def views(results: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Per configuration: what the templates show (the SVG is serialized, so marked safe)."""
    return [
        {
            **r,
            "icon": ICONS.get(r["verdict"], ""),
            "rounds": rounds(r),
            "svg": Markup(ratio_svg(r, threshold)) if r["pairs"] else None,
        }
        for r in results
    ]


def record_view(record: dict[str, Any]) -> dict[str, Any] | None:
    """The A/B part of a run-report record (``pytest --llmcheck-ab-base``), or None."""
    ab = (record.get("metrics") or {}).get("ab")
    if not isinstance(ab, dict) or not isinstance(ab.get("results"), list):
        return None
    try:
        return {
            "base": str((ab.get("base") or {}).get("spec", "")),
            "plan": process_plan(ab["options"]),
            "results": views(ab["results"], float(ab["options"]["threshold"])),
        }
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None  # a hand-edited record must not cost the report


def render(doc: dict[str, Any]) -> str:
    return pages.render(
        "ab.html.j2",
        EXTRA_CSS,
        doc=doc,
        headline=headline(doc),
        plan=process_plan(doc["options"]),
        results=views(doc["results"], doc["options"]["threshold"]),
    )


def write(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    return atomic_write_text(Path(path), render(doc))
