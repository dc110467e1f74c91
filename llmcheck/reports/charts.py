"""Which charts the HTML report draws: chosen from whatever data the records carry.

Selection is data-driven, so checks added later get charts without changes here:
- raw ``samples``: series that are curves over iterations by their name (memory, live tensors,
  loss, lr) get a line, with the least-squares trend for memory; the others a box per series;
- a table (a list of rows, or a name -> row mapping) with a batch-size column gets throughput,
  latency and memory versus batch size, for whichever of those columns it has;
- a table with a size column and an accuracy column gets size versus accuracy (one point per row);
- a list of numbers gets a per-iteration line, with the least-squares trend when the name says
  memory (leak curves);
- a name -> number mapping of norms (the gradient check's ``grad_norms``) gets a bar chart.

Charts over several records of one model (a parametrised check's configurations) come from
`charts_across`. Drawing, and making pygal's SVG fit a strict Content-Security-Policy, is `plots`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmcheck.reports import plots
from llmcheck.stats.significance import CURVE

MAX_CHARTS = 10  # per record
MIN_SERIES = 5  # a list needs this many numbers to be drawn as a curve
BATCH_KEYS = ("batch_size", "batch", "bs")
THROUGHPUT = re.compile(r"(tokens?|samples?|items?|seq)_?per_?s(ec)?\b|throughput|tok_s", re.I)
LATENCY = [re.compile(p, re.I) for p in (r"median_ms|p50", r"latency", r"_ms$")]
MEMORY = re.compile(r"memory|rss|bytes|alloc|_mb$|_mib$|_gib$|peak|leak", re.I)
MEMORY_COLUMNS = [re.compile(p, re.I) for p in (r"peak", r"memory|rss|alloc", r"bytes|_mb$|_mib$|_gib$")]
NOT_A_SERIES = re.compile(r"shape|index|indices|ids$|positions|sweep|ci$|iterations$|steps$", re.I)
# Columns for size versus accuracy, in order of preference.
SIZE = [re.compile(p, re.I) for p in (r"^size_ratio$", r"^size", r"size", r"bytes|_mb$")]
ACCURACY = [
    re.compile(p, re.I)
    for p in (r"top_?1|agree|accuracy", r"cosine", r"^kl$|kl_div", r"ppl|perplexity", r"rel_err|error")
]
NORMS = re.compile(r"norm", re.I)


@dataclass
class Chart:
    title: str
    svg: str = ""  # serialized SVG, escaped by the XML serializer
    css: str = ""  # the chart's stylesheet, lifted out of the SVG
    error: str = ""  # why the chart could not be drawn


def charts_for(record: dict[str, Any]) -> list[Chart]:
    """Every chart one record's data supports."""
    return _draw(list(_candidates(record)))


def charts_across(records: list[dict[str, Any]]) -> list[Chart]:
    """Charts over several records of one model: the configurations of a parametrised check
    (``latency[bs=1-...]``, ``latency[bs=8-...]``) drawn against batch size."""
    by_check: dict[str, list[dict]] = {}
    for r in records:
        by_check.setdefault(str(r.get("check", "")), []).append(r)
    return _draw([c for check, group in by_check.items() if len(group) >= 2 for c in _sweep(check, group)])


def _draw(candidates: list[tuple[str, Any]]) -> list[Chart]:
    out = []
    for title, build in candidates[:MAX_CHARTS]:
        try:
            svg, css = plots.render(build())
            out.append(Chart(title, svg, css))
        except Exception as exc:  # a chart must never cost the report
            out.append(Chart(title, error=f"{type(exc).__name__}: {exc}"))
    return out


def _candidates(record: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    samples = {k: v for k, v in (record.get("samples") or {}).items() if _numbers(v, 1)}
    curves = {
        k: v for k, v in samples.items() if len(v) >= MIN_SERIES and CURVE.search(k) and not NOT_A_SERIES.search(k)
    }
    spread = {k: v for k, v in samples.items() if k not in curves}
    if spread:
        yield "raw samples: distribution per series (box: quartiles; whiskers: 1.5 IQR)", lambda: plots.box(spread)
    for name, values in curves.items():
        yield _curve_title(name), lambda n=name, v=values: plots.series(n, v, trend=bool(MEMORY.search(n)))
    for path, value in _walk(record.get("metrics") or {}):
        name = ".".join(path)
        rows = _rows(value)
        if rows:
            yield from _table_charts(name, rows)
        elif _numbers(value, MIN_SERIES) and not NOT_A_SERIES.search(name) and path[-1] not in curves:
            yield _curve_title(name), lambda n=name, v=value: plots.series(n, v, trend=bool(MEMORY.search(n)))
        elif isinstance(value, dict) and NORMS.search(name) and _number_map(value):
            yield f"{name} per parameter", lambda n=name, v=value: plots.bars(n, v)


def _curve_title(name: str) -> str:
    return f"{name} per iteration" + (", with least-squares trend" if MEMORY.search(name) else "")


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) for every value inside nested metrics; does not descend into tables."""
    if path:
        yield path, value
    if isinstance(value, dict) and not _rows(value):
        for key, child in value.items():
            yield from _walk(child, path + (str(key),))


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> scalar for nested dicts (lists are not descended)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if prefix and isinstance(value, (str, int, float)) else {}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(value: Any, minimum: int) -> bool:
    return isinstance(value, list) and len(value) >= minimum and all(_is_number(v) for v in value)


def _number_map(value: dict) -> bool:
    return len(value) >= 2 and all(v is None or _is_number(v) for v in value.values())


def _rows(value: Any) -> list[dict[str, Any]] | None:
    """A table as a list of flat rows (nested columns as dotted names): from a list of dicts, or a
    name -> dict mapping (the name becomes a column)."""
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(r, dict) for r in value):
        return [_leaves(r) for r in value]
    if (
        isinstance(value, dict)
        and len(value) >= 2
        and all(isinstance(r, dict) and r for r in value.values())
        and all(_is_number(c) or isinstance(c, str) for r in value.values() for c in r.values())
    ):
        return [{"name": str(k), **_leaves(r)} for k, r in value.items()]
    return None


def _columns(rows: list[dict], patterns, exclude: tuple = (), most: int = 4) -> list[str]:
    """The columns matching the first of the patterns that matches any column at least two rows
    fill with numbers (``inference.tokens_per_s`` and ``training.tokens_per_s``, say)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for pattern in patterns if isinstance(patterns, list) else [patterns]:
        found = [
            k for k in keys if k not in exclude and pattern.search(k) and sum(_is_number(r.get(k)) for r in rows) >= 2
        ]
        if found:
            return found[:most]
    return []


def _column(rows: list[dict], patterns, exclude: tuple = ()) -> str | None:
    found = _columns(rows, patterns, exclude, most=1)
    return found[0] if found else None


def _table_charts(name: str, rows: list[dict]) -> Iterator[tuple[str, Any]]:
    batch = _column(rows, [re.compile(f"^{k}$") for k in BATCH_KEYS])
    if batch:
        yield from _versus_batch(name, rows, batch, "")
    size = _column(rows, SIZE)
    accuracy = _column(rows, ACCURACY, exclude=(size,))
    if size and accuracy:
        yield f"{name}: {size} vs {accuracy}", lambda: plots.scatter(rows, size, accuracy)


def _versus_batch(name: str, rows: list[dict], batch: str, suffix: str) -> Iterator[tuple[str, Any]]:
    for pattern, what in ((THROUGHPUT, "throughput"), (LATENCY, "latency"), (MEMORY_COLUMNS, "memory")):
        ys = _columns(rows, pattern, exclude=(batch,))
        if ys:
            yield f"{name}: {what} ({', '.join(ys)}) vs {batch}{suffix}", lambda ys=ys: plots.versus(rows, batch, ys)


def _sweep(check: str, records: list[dict]) -> Iterator[tuple[str, Any]]:
    rows = []
    for r in records:
        leaves = _leaves(r.get("metrics") or {})
        config = {k.split(".", 1)[1]: v for k, v in leaves.items() if k.startswith("config.")}
        rows.append(
            {
                **{k: v for k, v in leaves.items() if _is_number(v)},
                **{k: v for k, v in config.items() if k not in BATCH_KEYS},
            }
        )
    batch = _column(rows, [re.compile(f"^{k}$") for k in BATCH_KEYS] + [re.compile(r"^config\.(bs|batch_size)$")])
    if not batch or len({r.get(batch) for r in rows}) < 2:
        return
    yield from _versus_batch(check, rows, batch, ", across items")
