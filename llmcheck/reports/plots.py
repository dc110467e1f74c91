"""Drawing for the HTML report's charts: pygal (pure Python, SVG as its native output) configured
once, and its SVG made fit for a page under a strict Content-Security-Policy.

pygal adds a ``<script>`` (its tooltips) and ``<style>`` blocks to every chart, and one ``style``
attribute. `render` drops the scripts (the report runs no JavaScript), lifts the stylesheets out
so the page can serve them in its one hashed ``<style>``, and turns ``style`` attributes into SVG
presentation attributes. Text in the SVG is escaped by the XML serializer.
"""

from __future__ import annotations

import math
import statistics

MAX_BARS = 60
LABEL_KEYS = ("variant", "name", "config", "method", "label")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _group(row: dict, skip: tuple) -> str:
    """The label of a row's configuration: its short top-level text columns (dtype, mode) and its
    sequence length; nested columns and long texts (notes) are not labels."""
    lengths = ("seq_len",) if "seq_len" in row else ("sl", "sequence_length")
    parts = [
        f"{k}={v}"
        for k, v in row.items()
        if k not in skip and "." not in k and ((isinstance(v, (str, bool)) and len(str(v)) <= 24) or k in lengths)
    ]
    return " ".join(parts) or "all"


def _style():
    from pygal.style import Style

    return Style(
        background="white",
        plot_background="white",
        foreground="#333",
        foreground_strong="#111",
        foreground_subtle="#999",
        opacity=".75",
        opacity_hover=".95",
        transition="0ms",
        font_family="system-ui, -apple-system, 'Segoe UI', sans-serif",
        colors=("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"),
    )


def _config(**extra) -> dict:
    return {
        "js": [],
        "disable_xml_declaration": True,
        "style": _style(),
        "width": 760,
        "height": 360,
        "truncate_label": 48,
        "truncate_legend": 40,
        "legend_at_bottom": True,
        **extra,
    }


def box(samples: dict[str, list[float]]):
    """Box plot per sample series (Tukey whiskers), on a range fitted to the data."""
    import pygal

    values = [v for series in samples.values() for v in series]
    pad = (max(values) - min(values)) * 0.1 or abs(max(values)) * 0.05 or 1.0
    low, high = min(values) - pad, max(values) + pad
    chart = pygal.Box(**_config(box_mode="tukey", show_legend=len(samples) > 1, range=(low, high), zero=low))
    for name, values in list(samples.items())[:16]:
        chart.add(name, values)
    return chart


def series(name: str, values: list[float], trend: bool):
    """A curve over iterations; with ``trend``, its least-squares line and slope."""
    import pygal

    chart = pygal.XY(**_config(show_dots=len(values) <= 60, x_title="iteration", show_legend=trend))
    chart.add(name, list(enumerate(values)))
    if trend:
        xs = list(range(len(values)))
        slope, intercept = statistics.linear_regression(xs, values)
        chart.add(
            f"trend: {slope:+.4g} per iteration",
            [(0, intercept), (xs[-1], intercept + slope * xs[-1])],
            show_dots=False,
            stroke_style={"dasharray": "6, 4"},
        )
    return chart


def bars(name: str, values: dict[str, float | None]):
    """One bar per name (parameters in model order); log scale when values span > 100x."""
    import pygal

    items = list(values.items())
    note = ""
    if len(items) > MAX_BARS:  # keep the extremes, which are what a person looks for
        ranked = sorted((kv for kv in items if kv[1] is not None), key=lambda kv: kv[1])
        keep = {k for k, _ in ranked[: MAX_BARS // 2] + ranked[-MAX_BARS // 2 :]}
        items, note = [kv for kv in items if kv[0] in keep], f" ({MAX_BARS} of {len(values)}: smallest and largest)"
    positive = [v for _, v in items if v and v > 0]
    log = bool(positive) and max(positive) / min(positive) > 100
    extra = {}
    if log:  # whole decades as the value axis, the smallest bar a decade long
        lo, hi = math.floor(math.log10(min(positive))) - 1, math.ceil(math.log10(max(positive)))
        extra = {
            "logarithmic": True,
            "range": (10.0**lo, 10.0**hi),
            "zero": 10.0**lo,
            "y_labels": [10.0**k for k in range(lo, hi + 1)],
        }
    chart = pygal.HorizontalBar(
        **_config(
            height=90 + 18 * len(items),
            show_legend=False,
            x_title=name + (" (log scale)" if log else "") + note,
            **extra,
        )
    )
    items.reverse()  # pygal draws the first label at the bottom; keep the model's order top-down
    chart.x_labels = [k for k, _ in items]
    chart.add(name, [(v if v and (v > 0 or not log) else None) for _, v in items])
    return chart


def versus(rows: list[dict], x: str, ys: list[str]):
    """Each y against x, one line per y and configuration (the rows' short text columns)."""
    import pygal

    chart = pygal.XY(**_config(x_title=x, y_title=ys[0] if len(ys) == 1 else ""))
    for y in ys:
        for label, points in _grouped(rows, x, y).items():
            chart.add(label if len(ys) == 1 else f"{y} {label}".replace(" all", ""), sorted(points))
    return chart


def _grouped(rows: list[dict], x: str, y: str) -> dict[str, list[tuple[float, float]]]:
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if _is_number(row.get(x)) and _is_number(row.get(y)):
            groups.setdefault(_group(row, (x, y)), []).append((row[x], row[y]))
    return groups


def scatter(rows: list[dict], x: str, y: str):
    """One labelled point per row (a compression variant, say)."""
    import pygal

    chart = pygal.XY(**_config(stroke=False, x_title=x, y_title=y, dots_size=5))
    for i, row in enumerate(rows):
        if not (_is_number(row.get(x)) and _is_number(row.get(y))):
            continue
        label = next((str(row[k]) for k in LABEL_KEYS if k in row), f"row {i}")
        chart.add(label, [(row[x], row[y])])
    return chart


def render(chart) -> tuple[str, str]:
    """Serialize a pygal chart without scripts, inline styles or style attributes: (svg, css)."""
    from pygal.etree import etree

    root = chart.render_tree()
    css: list[str] = []
    _scrub(root, css)
    return etree.tostring(root, encoding="unicode"), "\n".join(css)


def _scrub(node, css: list[str]) -> None:
    for child in list(node):
        local = child.tag.rsplit("}", 1)[-1] if isinstance(child.tag, str) else ""
        if local in ("", "script", "style"):  # "" is a comment or processing instruction
            if local == "style" and child.text and "</" not in child.text:
                css.append(child.text)
            node.remove(child)
            continue
        for decl in (child.attrib.pop("style", None) or "").split(";"):
            key, _, value = decl.partition(":")
            if key.strip() and value.strip():
                child.set(key.strip(), value.strip())
        _scrub(child, css)
