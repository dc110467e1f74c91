"""``llmcheck history REPORT... | DIR``: the stored reports of ``main``, one chart per metric over commits.

A pull request's A/B run sees only its own change; a slow creep, 2 % here and 3 % there, passes
every one of them. The history page shows each timed series over the runs of ``main`` (oldest
first): per run the median and an interval (the range of the per-process medians when the run
measured in several processes, else the 95 % CI of the median), with the machine-drift
calibration (``metrics.calibration_ms``, a fixed matmul timed in the same processes) in a panel
below, so a step that the calibration shows too reads as the machine, not the code. Change points
and creep are found by `llmcheck.stats.change_points` and flagged on the chart and at the top.

The page is self-contained like the run report (`pages`: autoescaped template, a policy that lets
nothing load or run); the charts are `history_chart`'s hand-built SVG.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from llmcheck.reports import history_chart, json_report, pages
from llmcheck.reports.files import atomic_write_text
from llmcheck.stats import change_points as cp
from llmcheck.stats.samples import median_ci
from llmcheck.stats.significance import repeated

EXTRA_CSS = """
section.series { border: 1px solid var(--line); border-radius: 6px; padding: 4px 12px 10px; margin: 10px 0; }
section.flagged { border-color: var(--fail); }
.flag { color: var(--fail); font-weight: 600; } .drift { color: var(--warn); }
figure.history { margin: 6px 0; max-width: 780px; } figure.history svg { width: 100%; height: auto; display: block; }
figure.history figcaption { font-size: 12.5px; color: #57606a; }
"""


@dataclass
class Point:
    run: int  # index into the runs
    median: float
    low: float | None
    high: float | None
    calibration: float | None


@dataclass
class Series:
    item: str
    name: str
    points: list[Point] = field(default_factory=list)
    shifts: list[cp.Shift] = field(default_factory=list)
    drift: dict[int, float] = field(default_factory=dict)  # shift index -> the calibration's change there
    window: int = cp.WINDOW


def load(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, document) per run, oldest first. A folder contributes its llmcheck reports (other JSON
    files in it are skipped), ordered by their start time; files keep the order given."""
    runs: list[tuple[str, dict]] = []
    skipped: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = []
            for f in sorted(path.glob("*.json")):
                try:
                    found.append((f.name, json_report.read(f)))
                except json_report.ReportError as exc:
                    skipped.append(f"{f.name}: {exc}")
            runs += sorted(found, key=lambda r: r[1].get("started_at") or 0)
        else:
            runs.append((path.name, json_report.read(path)))
    if not runs:
        why = f" (skipped {skipped[0]})" if skipped else ""
        raise json_report.ReportError(f"no llmcheck reports in {', '.join(paths)}{why}")
    return runs


def point(record: dict[str, Any], name: str, run: int) -> Point | None:
    """One run's median and interval of a series, with the run's calibration."""
    values = sorted(v for v in (record.get("samples") or {}).get(name) or [] if isinstance(v, (int, float)) and v > 0)
    if not values:
        return None
    metrics = record.get("metrics") or {}
    per_process = (((metrics.get("processes") or {}).get("series") or {}).get(name) or {}).get("medians") or []
    per_process = [m for m in per_process if isinstance(m, (int, float)) and m > 0]
    if len(per_process) >= 2:
        median, low, high = statistics.median(per_process), min(per_process), max(per_process)
    else:
        ci = median_ci(values, 0.95)
        median, (low, high) = statistics.median(values), ci or (None, None)
    calibration = metrics.get("calibration_ms")
    calibration = float(calibration) if isinstance(calibration, (int, float)) and calibration > 0 else None
    return Point(run, float(median), low, high, calibration)


def collect(docs: list[dict[str, Any]], window: int, z: float, min_effect: float) -> list[Series]:
    """Every repeated (timed) series of every item, with its change points."""
    table: dict[tuple[str, str], Series] = {}
    for i, doc in enumerate(docs):
        for record in doc.get("results", []):
            for name in record.get("samples") or {}:
                p = point(record, name, i) if repeated(name) else None
                if p is not None:
                    table.setdefault((record["id"], name), Series(record["id"], name)).points.append(p)
    out = [s for s in table.values() if len(s.points) >= 2]
    for s in out:
        s.window = window
        s.shifts = cp.change_points([p.median for p in s.points], window, z, min_effect)
        calibration = [p.calibration for p in s.points]
        if all(calibration):
            s.drift = {shift.index: _moved(calibration, shift, window) for shift in s.shifts}
    return sorted(out, key=lambda s: (not s.shifts, s.item, s.name))


def _moved(calibration: list[float], shift: cp.Shift, window: int) -> float:
    """How far the calibration's median moved across the same split as ``shift``."""
    n, t = len(calibration), shift.index
    k = min(window, t, n - t)
    before = calibration[:k] if shift.kind == "creep" else calibration[t - k : t]
    return statistics.median(calibration[t : t + k]) / statistics.median(before) - 1


def describe(s: Series, shift: cp.Shift, runs: list[dict[str, Any]]) -> str:
    """One line per flagged shift, for the page and the terminal."""
    where = runs[s.points[shift.index].run]["label"]
    what = (
        f"change point at run {s.points[shift.index].run + 1} ({where})"
        if shift.kind == "step"
        else f"creep: the last runs against the first (up to run {s.points[-1].run + 1})"
    )
    text = (
        f"{what}: {shift.change:+.1%} ({shift.before:.4g} -> {shift.after:.4g} ms), "
        f"{shift.score:.1f} standard errors of the run-to-run noise"
    )
    drift = s.drift.get(shift.index)
    if drift is not None and abs(drift) > abs(shift.change) / 2 and (drift > 0) == (shift.change > 0):
        text += f"; the machine's calibration moved {drift:+.1%} there too: likely the machine, not the code"
    return text


def run_info(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    env = doc.get("environment") or {}
    commit = env.get("git_commit")
    return {
        "file": name,
        "commit": commit,
        "label": str(commit)[:10] if commit else name,
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(doc["started_at"])) if doc.get("started_at") else "-",
        "checks": len(doc.get("results", [])),
        "torch": env.get("torch"),
    }


def render(
    runs: list[tuple[str, dict[str, Any]]], window: int = cp.WINDOW, z: float = cp.Z, min_effect: float = cp.MIN_EFFECT
) -> tuple[str, list[str]]:
    """The page, and one line per flagged shift (``item series: text``)."""
    info = [run_info(name, doc) for name, doc in runs]
    series = collect([doc for _, doc in runs], window, z, min_effect)
    views, flags = [], []
    for i, s in enumerate(series, start=1):
        lines = [describe(s, shift, info) for shift in s.shifts]
        flags += [f"{s.item} {s.name}: {line}" for line in lines]
        views.append({"id": f"s{i}", "series": s, "flags": lines, "svg": Markup(history_chart.chart(s, info))})
    page = pages.render(
        "history.html.j2",
        EXTRA_CSS,
        runs=info,
        views=views,
        flagged=[v for v in views if v["flags"]],
        method={"window": window, "z": z, "min_effect": min_effect},
    )
    return page, flags


def add_parser(sub) -> None:
    h = sub.add_parser(
        "history",
        help="a self-contained HTML page of stored reports over commits, with change points flagged",
        description="One chart per timed series over the given runs of main (oldest first; a folder's reports "
        "are ordered by start time): median and interval per run, the machine calibration below, and change "
        "points where the series shifts beyond its run-to-run noise (llmcheck.stats.change_points).",
    )
    h.add_argument("reports", nargs="+", metavar="REPORT|DIR", help="JSON run reports, or folders of them")
    h.add_argument("--html", required=True, metavar="OUT.html", help="where to write the page")
    h.add_argument("--window", type=int, default=cp.WINDOW, help="runs on each side of a split (default 5)")
    h.add_argument("--z", type=float, default=cp.Z, help="standard errors a shift must exceed (default 4)")
    h.add_argument("--min-effect", type=float, default=cp.MIN_EFFECT, help="smallest shift flagged (default 0.05)")
    h.set_defaults(run=main)


def main(args) -> int:
    page, flags = render(load(args.reports), args.window, args.z, args.min_effect)
    path = atomic_write_text(Path(args.html), page)
    for line in flags:
        print(f"llmcheck history: {line}")
    print(f"llmcheck history: {len(flags)} flagged shift(s); page written to {path}", file=sys.stderr)
    return 0
