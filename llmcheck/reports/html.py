"""The HTML report: one self-contained file rendered from the JSON run document.

Jinja2 with autoescaping renders every user-controlled string (model names, ids, messages, traces,
captured output) as text. The page loads nothing and runs no script; its Content-Security-Policy
(``default-src 'none'``) allows exactly one stylesheet, by its SHA-256 hash, so a string that got
past escaping still could not run or restyle anything. Charts are inline SVG from `charts`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from markupsafe import Markup

from llmcheck.reports import ab_html, pages
from llmcheck.reports.charts import Chart, charts_across, charts_for
from llmcheck.reports.files import atomic_write_text
from llmcheck.results import FAILING, STATUSES

SYMBOLS = {
    "passed": "✔",
    "failed": "✘",
    "error": "✘",
    "timeout": "⏱",
    "crashed": "☠",
    "skipped": "–",
    "advisory": "⚠",  # not a status: a record with what-if findings that did not gate
}
MAX_METRIC_ROWS = 200
MAX_TEXT = 20_000  # messages, traces, captured output
MAX_CELL = 400  # one metric value in the table


def render(document: dict[str, Any], source: str = "the run", links_from: str | None = None) -> str:
    """The HTML page for one run document (as built by json_report.build or read back).

    ``links_from``: the JSON report's folder relative to the page's; artifacts the report keeps next
    to itself (relative paths) become links. None: artifacts are shown as text only."""
    records = document.get("results", [])
    models, chart_css = _models(records, links_from)
    return pages.render(
        "report.html.j2",
        "\n" + "\n".join(dict.fromkeys(chart_css)) + ab_html.EXTRA_CSS,
        run=_run(document),
        grid=_grid(records, models),
        environment=[(k, _text(v)) for k, v in sorted((document.get("environment") or {}).items())],
        models=models,
        symbols=SYMBOLS,
        source=source,
    )


def write(
    path: str | os.PathLike, document: dict[str, Any], source: str = "the run", links_from: str | None = None
) -> Path:
    """Render and write atomically (temp file, fsync, ``os.replace``): a reader never sees half a page."""
    return atomic_write_text(Path(path), render(document, source, links_from))


def _run(doc: dict[str, Any]) -> dict[str, Any]:
    summary = doc.get("summary") or {}
    counts = [(s, summary.get(s, 0)) for s in STATUSES if summary.get(s)]
    started, finished = doc.get("started_at"), doc.get("finished_at")
    return {
        "counts": counts,
        "total": summary.get("total", len(doc.get("results", []))),
        "headline": ", ".join(f"{n} {s}" for s, n in counts) or "no checks ran",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if _num(started) else "?",
        "duration": _seconds(finished - started) if _num(started) and _num(finished) else "?",
        "version": (doc.get("producer") or {}).get("version") or "?",
        "schema": doc.get("schema_version"),
        "commit": (doc.get("environment") or {}).get("git_commit"),
        "interrupted": bool(doc.get("interrupted")),
        "advisory": sum(bool(r.get("advisory")) for r in doc.get("results", [])),
    }


def _models(records: list[dict], links_from: str | None = None) -> tuple[list[dict], list[str]]:
    """Records grouped by (file, model) in run order, each turned into its view; plus the charts' CSS."""
    models: dict[tuple, dict] = {}
    raw: dict[tuple, list[dict]] = {}
    for i, r in enumerate(records):
        key = (str(r.get("file", "")), str(r.get("model", "?")))
        model = models.setdefault(key, {"name": key[1], "file": key[0], "records": []})
        model["records"].append(_record(r, f"r{i}", links_from))
        raw.setdefault(key, []).append(r)
    for key, model in models.items():
        model["charts"] = _safe(charts_across(raw[key]))
    charts = [c for m in models.values() for c in m["charts"] + [c for v in m["records"] for c in v["charts"]]]
    return list(models.values()), [c.css for c in charts if c.css]


def _safe(charts: list[Chart]) -> list[Chart]:
    for chart in charts:
        chart.svg = Markup(chart.svg)  # serialized by the XML writer, which escaped every text node
    return charts


def _link(path: str, links_from: str | None) -> str | None:
    """A relative href for an artifact kept next to the report; None for absolute or odd paths."""
    if links_from is None or not isinstance(path, str) or os.path.isabs(path) or ".." in Path(path).parts:
        return None
    if ":" in path or "\\" in path:  # no scheme (javascript:, data:), no Windows drive or separator
        return None
    return Path(links_from, path).as_posix() if links_from != "." else Path(path).as_posix()


def _record(r: dict[str, Any], anchor: str, links_from: str | None = None) -> dict[str, Any]:
    metrics = list(_flatten(r["metrics"])) if r.get("metrics") else []
    charts = _safe(charts_for(r))
    return {
        "anchor": anchor,
        "status": r["status"],
        "check": r.get("check", "?"),
        "family": r.get("family", ""),
        "id": r["id"],
        "message": _clip(r.get("message", "")),
        "headline": _headline(r.get("message", "")),
        "advisory": [_clip(a) for a in r.get("advisory") or []],
        "open": r["status"] in FAILING or bool(charts) or bool(r.get("advisory")),
        "charts": charts,
        "duration": _seconds(r["duration_s"]) if _num(r.get("duration_s")) else "",
        "params": [(k, _text(v)) for k, v in sorted((r.get("params") or {}).items())],
        "metrics": metrics[:MAX_METRIC_ROWS],
        "metrics_hidden": max(0, len(metrics) - MAX_METRIC_ROWS),
        "samples": [_sample_row(k, v) for k, v in (r.get("samples") or {}).items() if isinstance(v, list) and v],
        "artifacts": [(n, p, _link(p, links_from)) for n, p in sorted((r.get("artifacts") or {}).items())],
        "trace": _clip(r.get("trace", "")),
        "output": _clip(r.get("output", "")),
        "ab": ab_html.record_view(r),  # pytest --llmcheck-ab-base: the A/B verdict and ratio plot
    }


def _headline(message: str, limit: int = 120) -> str:
    first = str(message).strip().splitlines()[0] if str(message).strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _grid(records: list[dict], models: list[dict]) -> dict[str, Any]:
    families = sorted({str(r.get("family", "")) for r in records})
    rows = []
    for model in models:
        cells = []
        for family in families:
            mine = [v for v in model["records"] if v["family"] == family]
            cell = [
                (s, n, next(v["anchor"] for v in mine if v["status"] == s))
                for s in STATUSES
                if (n := sum(v["status"] == s for v in mine))
            ]
            advised = [v for v in mine if v["advisory"]]
            cells.append(cell + ([("advisory", len(advised), advised[0]["anchor"])] if advised else []))
        rows.append(
            {"model": model["name"], "file": model["file"], "file_name": Path(model["file"]).name, "cells": cells}
        )
    return {"families": families, "rows": rows}


def _flatten(value: Any, prefix: str = ""):
    """(dotted path, display text, is-number) rows for nested metrics; long lists are summarised."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and len(value) > 8 and all(_num(v) for v in value):
        yield prefix, f"{len(value)} values, {_fmt(min(value))} … {_fmt(max(value))} (see chart)", False
    else:
        text = _fmt(value) if _num(value) else _text(value)
        yield (
            prefix,
            text if len(text) <= MAX_CELL else text[:MAX_CELL] + " … (the JSON report has it all)",
            _num(value),
        )


def _sample_row(name: str, values: list) -> dict[str, Any]:
    nums = [v for v in values if _num(v)]
    return {
        "name": name,
        "n": len(values),
        "min": _fmt(min(nums)) if nums else "",
        "median": _fmt(statistics.median(nums)) if nums else "",
        "max": _fmt(max(nums)) if nums else "",
    }


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: float) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _text(v: Any) -> str:
    return _clip(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))


def _clip(text: str) -> str:
    text = str(text)
    return (
        text
        if len(text) <= MAX_TEXT
        else text[: MAX_TEXT // 4] + "\n[... clipped; the JSON report has it all ...]\n" + text[-MAX_TEXT * 3 // 4 :]
    )


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")
