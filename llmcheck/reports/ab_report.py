"""The A/B document (strict JSON, with its schema) and its terminal and Markdown renderings.

The document is built once from the engine's outcomes; every renderer only reads it, so
``--json``, ``--markdown``, ``--html`` and the terminal table always agree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmcheck.reports.files import atomic_write_text
from llmcheck.reports.markdown import cell
from llmcheck.results import strict_json

SCHEMA_NAME = "llmcheck-ab"
SCHEMA_VERSION = "1.0"
ICONS = {
    "regression": "❌",
    "improvement": "✅",
    "no significant change": "〰️",
    "inconclusive": "❔",
    "skipped": "–",
    "error": "⚠️",
}
_NUM = {"type": ["number", "null"]}
_PAIR = {
    "type": "object",
    "required": ["round", "first", "base_ms", "head_ms", "ratio"],
    "properties": {
        "round": {"type": "integer"},
        "first": {"enum": ["BASE", "HEAD"]},
        "base_ms": {"type": "number"},
        "head_ms": {"type": "number"},
        "ratio": {"type": "number"},
    },
}
_RESULT = {
    "type": "object",
    "required": ["id", "model", "verdict", "message", "pairs", "estimate"],
    "properties": {
        "id": {"type": "string"},
        "model": {"type": "string"},
        "verdict": {"enum": list(ICONS)},
        "message": {"type": "string"},
        "pairs": {"type": "array", "items": _PAIR},
        "base_median_ms": _NUM,
        "head_median_ms": _NUM,
        "estimate": {
            "type": "object",
            "required": ["n", "ratio", "ci_low", "ci_high", "half_width"],
            "properties": {k: _NUM for k in ("ratio", "ci_low", "ci_high", "half_width")},
        },
    },
}
_SIDE = {
    "type": "object",
    "required": ["spec", "path"],
    "properties": {"spec": {"type": "string"}, "path": {"type": "string"}, "commit": {"type": ["string", "null"]}},
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "llmcheck ab result",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "check",
        "metric",
        "statistic",
        "base",
        "head",
        "options",
        "results",
        "summary",
    ],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"type": "string"},
        "check": {"type": "string"},
        "metric": {"type": "string"},
        "statistic": {"type": "string"},
        "base": _SIDE,
        "head": _SIDE,
        "rounds": {"type": "integer"},
        "options": {"type": "object", "required": ["budget_s", "precision", "threshold", "seed", "confidence"]},
        "results": {"type": "array", "items": _RESULT},
        "summary": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


class ABReportError(ValueError):
    """A file that is not an llmcheck A/B document of a known schema version."""


def build(
    *,
    check: str,
    metric: str,
    statistic: str,
    base: dict,
    head: dict,
    options: dict,
    results: list[dict],
    rounds: int,
    environment: dict,
    producer: dict,
    started: float,
    finished: float,
) -> dict[str, Any]:
    """The A/B document: what was compared, how, and per configuration the pairs and the verdict."""
    summary: dict[str, int] = {}
    for r in results:
        summary[r["verdict"]] = summary.get(r["verdict"], 0) + 1
    return strict_json(
        {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "producer": producer,
            "environment": environment,
            "started_at": started,
            "finished_at": finished,
            "check": check,
            "metric": metric,
            "statistic": statistic,
            "base": base,
            "head": head,
            "options": options,
            "rounds": rounds,
            "results": results,
            "summary": summary,
        }
    )


def write_json(path: str | os.PathLike, document: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n")


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Load an A/B document, refusing other files and other major schema versions."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ABReportError(f"cannot read A/B document {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_NAME:
        raise ABReportError(f"{path} is not an llmcheck A/B document (schema {SCHEMA_NAME!r})")
    if str(doc.get("schema_version", "")).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ABReportError(
            f"{path} has schema version {doc.get('schema_version')}; this llmcheck reads {SCHEMA_VERSION}"
        )
    return doc


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g} ms"


def _ratio(r: dict[str, Any]) -> tuple[str, str]:
    est = r["estimate"]
    ratio = "-" if est.get("ratio") is None else f"{est['ratio']:.3f}"
    ci = "-" if est.get("ci_low") is None else f"{est['ci_low']:.3f}-{est['ci_high']:.3f}"
    return ratio, ci


def process_plan(options: dict[str, Any]) -> str:
    """How the rounds' processes were used, as `llmcheck.ab.engine` runs them: a pair of warm worker
    processes serves up to ``recycle`` rounds (fewer when the budget would otherwise hold too few
    pairs) before a fresh pair starts, and the interval is taken over those process pairs."""
    # absent from documents written before pairs were reused: those started a fresh pair every round
    n = options.get("recycle", 1) if isinstance(options, dict) else None
    if n == 1:
        return "a fresh pair of worker processes (one BASE, one HEAD) every round"
    most = f"up to {n} rounds" if isinstance(n, int) and n > 1 else "several rounds"
    return (
        f"a warm pair of worker processes (one BASE, one HEAD) serves {most} before a fresh pair starts; "
        "the interval is over process pairs"
    )


def headline(doc: dict[str, Any]) -> str:
    n = doc["summary"].get("regression", 0)
    verdicts = ", ".join(f"{k} {v}" for k, v in doc["summary"].items())
    return (
        f"llmcheck ab: {n} REGRESSION{'S' if n != 1 else ''}" if n else "llmcheck ab: no regressions"
    ) + f" ({verdicts})"


def rounds(result: dict[str, Any]) -> str:
    """``77 (10)``: the result's rounds (one BASE/HEAD pair of turns each) and the process pairs they
    ran in, the interval's unit; a document from before warm pairs had a fresh pair every round."""
    pairs = result["pairs"]
    processes = result.get("process_pairs") or len({p.get("process", -i) for i, p in enumerate(pairs, 1)})
    return f"{len(pairs)} ({processes})"


def table(doc: dict[str, Any]) -> str:
    """The terminal table: config, rounds (process pairs), BASE and HEAD medians, ratio, CI and verdict."""
    stat = doc["statistic"]
    head = [
        "config",
        "rounds (process pairs)",
        f"BASE {stat}",
        f"HEAD {stat}",
        "ratio",
        f"{doc['options']['confidence']:.0%} CI",
        "verdict",
    ]
    rows = [
        [
            f"{r['model']}::{r['id']}",
            rounds(r),
            _ms(r["base_median_ms"]),
            _ms(r["head_median_ms"]),
            *_ratio(r),
            r["verdict"],
        ]
        for r in doc["results"]
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  " + "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    lines = [
        headline(doc),
        f"  BASE {doc['base']['spec']}  vs  HEAD {doc['head']['spec']}; {doc['check']} "
        f"{doc['metric']}, threshold ±{doc['options']['threshold']:.0%}, {doc['rounds']} rounds",
        fmt(head),
    ]
    lines += [fmt(row) for row in rows]
    lines += [f"  {r['model']}::{r['id']}: {r['message']}" for r in doc["results"]]
    return "\n".join(lines) + "\n"


def markdown(doc: dict[str, Any]) -> str:
    """The result as Markdown for a pull-request comment; user strings escaped for table cells."""
    n = doc["summary"].get("regression", 0)
    o = doc["options"]
    lines = [
        f"{'❌' if n else '✅'} **{cell(headline(doc))}**",
        "",
        f"BASE {cell(doc['base']['spec'])} vs HEAD {cell(doc['head']['spec'])}: {doc['check']} "
        f"{cell(doc['metric'])} ({cell(doc['statistic'])} of each turn's samples), {doc['rounds']} rounds of "
        f"interleaved BASE and HEAD turns; {process_plan(o)}; threshold ±{o['threshold']:.0%}, "
        f"{o['confidence']:.0%} CI, budget {o['budget_s']:g} s, precision target ±{o['precision']:.0%}, "
        f"seed {o['seed']}.",
        "",
        f"| | config | rounds (process pairs) | BASE | HEAD | ratio HEAD/BASE | {o['confidence']:.0%} CI | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        ratio, ci = _ratio(r)
        lines.append(
            f"| {ICONS.get(r['verdict'], '')} | {cell(r['model'] + '::' + r['id'])} | {rounds(r)} | "
            f"{_ms(r['base_median_ms'])} | {_ms(r['head_median_ms'])} | {ratio} | {ci} | {cell(r['verdict'])} |"
        )
    lines += ["", *[f"- {cell(r['model'] + '::' + r['id'])}: {cell(r['message'])}" for r in doc["results"]]]
    return "\n".join(lines) + "\n"
