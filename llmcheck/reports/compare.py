"""Compare two run reports: did HEAD regress against BASE? Pure: documents in, rows out.

Items pair by id. A regression is: a check that passed (or was skipped) and now fails, errors,
times out or crashes; a check that passed and is now skipped (it no longer proves anything); a
check missing from HEAD; a raw-sample series whose median moved the wrong way by more than the
minimum effect *and* whose Mann-Whitney U test says the shift is real; or a metric beyond a
``--fail-on`` threshold (for measured checks, only when their samples confirm the shift). Noise
alone is never a regression: with the defaults (alpha 0.01, 5% minimum effect) an A/A comparison
of recorded samples fires far less than 1% of the time (tests/test_compare_statistics.py).

Run-to-run drift on shared machines can exceed within-run noise (docs/design.md §4). When both runs
measured a series in several worker processes (``metrics.processes.series``, llmcheck.isolation.processes),
a shift must also be significant across the per-process medians, and a series whose
between-process spread exceeds the threshold is "inconclusive": too noisy to compare two stored
runs (significance.judge_processes). Reports without per-process data are judged as before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from llmcheck.results import FAILING
from llmcheck.stats.significance import (
    judge_processes,
    judge_shift,
    machine_drift,
    pct,
    process_shift,
    repeated,
    shift,
    too_noisy,
)

# Environment fields that make two runs incomparable, and fields that are worth a warning.
REFUSE_ENV = ("torch", "cuda", "device")
NOTE_ENV = ("python", "cpu", "cpu_count", "torch_threads")
HIGHER_BETTER = re.compile(
    r"per_?s(ec)?\b|throughput|accuracy|\bacc\b|agreement|top_?1|speedup|speed_up|cosine|"
    r"mfu|efficiency|coverage|largest|max_batch|loss_drop",
    re.I,
)
LOWER_BETTER = re.compile(
    r"ms\b|_s\b|latency|time|duration|seconds|p50|p90|p99|median|mean|memory|rss|bytes|"
    r"_mb\b|_gib\b|peak|loss|perplexity|ppl|\bkl|error|err\b|leak|slope|\bcv\b|iqr|size",
    re.I,
)
UNIT = re.compile(r"_(ms|us|ns|s|mb|mib|gb|gib|bytes)$")
SPEC = re.compile(r"^(?P<pattern>[^:]+):(?P<sign>[+-])(?P<amount>\d+(\.\d*)?|\.\d+)(?P<pct>%?)$")


class CompareError(ValueError):
    """The two reports cannot be compared as asked (schema, environment, bad threshold)."""


@dataclass(frozen=True)
class Threshold:
    """``latency.p50:+5%``: the metric p50 of check latency regresses when it rises by more than 5%."""

    pattern: str  # CHECK.METRIC with fnmatch wildcards; METRIC may be the tail of a dotted path
    worse: int  # +1: an increase is worse; -1: a decrease is worse
    amount: float
    relative: bool
    source: str = "the command line"

    @classmethod
    def parse(cls, text: str, source: str = "the command line") -> Threshold:
        m = SPEC.match(text.strip())
        if not m:
            raise CompareError(
                f"threshold {text!r} from {source}: expected CHECK.METRIC:+N% or CHECK.METRIC:-N "
                "(e.g. latency.p50:+5%, throughput.tokens_per_s:-3%, gradient.loss:+0.1)"
            )
        amount = float(m["amount"]) / (100 if m["pct"] else 1)
        return cls(m["pattern"], 1 if m["sign"] == "+" else -1, amount, bool(m["pct"]), source)

    def matches(self, record: dict[str, Any], path: str) -> bool:
        check, _, metric = self.pattern.partition(".")
        if not any(fnmatchcase(str(record.get(k, "")), check) for k in ("check", "family")):
            return False
        return any(fnmatchcase(name, metric or "*") for name in metric_names(path))

    def breached(self, base: float, head: float) -> bool:
        delta = (head - base) * self.worse
        if self.relative:
            return delta > self.amount * abs(base) if base else delta > 0
        return delta > self.amount

    def text(self) -> str:
        return (
            f"{'+' if self.worse > 0 else '-'}{self.amount * 100:g}%"
            if self.relative
            else f"{'+' if self.worse > 0 else '-'}{self.amount:g}"
        )


@dataclass
class Rules:
    alpha: float = 0.01  # significance level of the two-sided Mann-Whitney U test
    min_effect: float = 0.05  # relative median shift a sample series must exceed to count
    thresholds: list[Threshold] = field(default_factory=list)  # later entries win
    refuse_env: tuple[str, ...] = REFUSE_ENV
    allow_env_mismatch: bool = False

    def threshold(self, record: dict, path: str) -> Threshold | None:
        return next((t for t in reversed(self.thresholds) if t.matches(record, path)), None)


def metric_names(path: str) -> set[str]:
    """Every name a threshold may use for a metric path: its dotted tails, with and without a unit
    suffix, and with median spelled p50 (``forward.median_ms`` answers to ``p50`` and ``median``)."""
    parts = path.split(".")
    names = set()
    for tail in (".".join(parts[i:]) for i in range(len(parts))):
        bare = UNIT.sub("", tail)
        names |= {tail, bare, re.sub(r"\bmedian\b", "p50", bare)}
    return names


def better(name: str) -> str | None:
    """Which way is good for a metric, from its name: "lower", "higher" or None when unknown."""
    leaf = name.rsplit(".", 1)[-1]
    for text in (leaf, name):
        if HIGHER_BETTER.search(text):
            return "higher"
        if LOWER_BETTER.search(text):
            return "lower"
    return None


def environment_differences(base: dict, head: dict, fields) -> list[tuple[str, Any, Any]]:
    b, h = base.get("environment") or {}, head.get("environment") or {}
    return [(k, b.get(k), h.get(k)) for k in fields if b.get(k) != h.get(k)]


def compare(base: dict[str, Any], head: dict[str, Any], rules: Rules | None = None) -> dict[str, Any]:
    """The comparison of two run documents (as returned by json_report.read)."""
    rules = rules or Rules()
    warnings = _compatible(base, head, rules)
    base_items = {r["id"]: r for r in base["results"]}
    head_items = {r["id"]: r for r in head["results"]}
    rows: list[dict[str, Any]] = []
    for item_id, b in base_items.items():
        h = head_items.get(item_id)
        if h is None:
            rows.append(
                _row(
                    b, "missing", "", b["status"], None, "regression", "the check ran in BASE but is missing from HEAD"
                )
            )
            continue
        rows += _status_rows(b, h) + _sample_rows(b, h, rules) + _metric_rows(b, h, rules)
    for item_id, h in head_items.items():
        if item_id not in base_items:
            rows.append(_row(h, "new", "", None, h["status"], "new", f"new check ({h['status']})"))
    records = [*base["results"], *head["results"]]
    warnings += [
        f"threshold {t.pattern}:{t.text()} from {t.source} matched no metric or sample series"
        for t in rules.thresholds
        if not any(t.matches(r, p) for r in records for p in _paths(r))
    ]
    noisy = sum(bool(r.get("noisy")) for r in rows)
    if noisy:
        warnings.append(
            f"{noisy} series too noisy to compare across the two stored runs (their between-process spread "
            "exceeds the threshold, or the machine's calibration workload moved); compare the versions "
            "interleaved in one session with llmcheck ab"
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return {
        "base": _side(base),
        "head": _side(head),
        "rules": {
            "alpha": rules.alpha,
            "min_effect": rules.min_effect,
            "thresholds": [f"{t.pattern}:{t.text()}" for t in rules.thresholds],
        },
        "warnings": warnings,
        "counts": counts,
        "regressions": counts.get("regression", 0),
        "paired": len(base_items.keys() & head_items.keys()),
        "rows": rows,
    }


def _side(doc: dict) -> dict[str, Any]:
    env = doc.get("environment") or {}
    return {
        "commit": env.get("git_commit"),
        "started_at": doc.get("started_at"),
        "items": len(doc["results"]),
        "interrupted": bool(doc.get("interrupted")),
    }


def _compatible(base: dict, head: dict, rules: Rules) -> list[str]:
    majors = [str(d.get("schema_version", "?")).split(".")[0] for d in (base, head)]
    if majors[0] != majors[1]:
        raise CompareError(
            f"schema versions differ: BASE {base.get('schema_version')}, HEAD {head.get('schema_version')}"
        )
    diffs = environment_differences(base, head, rules.refuse_env)
    text = "; ".join(f"{k}: BASE {b!r}, HEAD {h!r}" for k, b, h in diffs)
    if diffs and not rules.allow_env_mismatch:
        raise CompareError(
            f"the runs come from different environments ({text}); timings and numerics are not "
            "comparable. Re-run on matching environments, or pass --allow-env-mismatch to compare anyway"
        )
    warnings = [f"environments differ (allowed by --allow-env-mismatch): {text}"] if diffs else []
    notes = environment_differences(base, head, NOTE_ENV)
    if notes:
        warnings.append(
            "machines differ, timings may not be comparable: "
            + "; ".join(f"{k}: BASE {b!r}, HEAD {h!r}" for k, b, h in notes)
        )
    warnings += [
        f"the {side} run was interrupted: it holds only the checks that finished"
        for side, doc in (("BASE", base), ("HEAD", head))
        if doc.get("interrupted")
    ]
    return warnings


def _row(record: dict, kind: str, name: str, base: Any, head: Any, verdict: str, note: str, **extra) -> dict[str, Any]:
    row = {
        "id": record["id"],
        "model": record.get("model"),
        "check": record.get("check"),
        "kind": kind,
        "name": name,
        "base": base,
        "head": head,
        "change": None,
        "better": None,
        "p_value": None,
        "threshold": None,
        "threshold_pattern": None,
        "verdict": verdict,
        "note": note,
    }
    row.update(extra)
    return row


def _status_rows(b: dict, h: dict) -> list[dict]:
    was, now = b["status"], h["status"]
    if was == now:
        return []
    if now in FAILING and was not in FAILING:
        verdict, note = "regression", f"{was} -> {now}: {_first_line(h.get('message', ''))}"
    elif was == "passed" and now == "skipped":
        verdict, note = (
            "regression",
            f"passed -> skipped, so it no longer proves anything: {_first_line(h.get('message', ''))}",
        )
    elif was in FAILING and now == "passed":
        verdict, note = "improvement", f"{was} -> passed"
    else:
        verdict, note = "changed", f"{was} -> {now}"
    return [_row(h, "status", "", was, now, verdict, note)]


def _first_line(text: str, limit: int = 160) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _paths(record: dict) -> list[str]:
    return [f"samples.{k}" for k in record.get("samples") or {}] + list(numeric_leaves(record.get("metrics") or {}))


def numeric_leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """Dotted path -> number for every numeric leaf of nested metrics. Rows of a table (a list of
    dicts) are keyed by their label (``table.int8_dynamic.top1``); other lists and booleans are
    not metrics."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        for i, row in enumerate(value):
            out.update(numeric_leaves(row, f"{prefix}.{_row_label(row, i)}" if prefix else _row_label(row, i)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and prefix:
        out[prefix] = float(value)
    return out


def _sample_row(record: dict, name: str, s, verdict: str, note: str, **extra) -> dict[str, Any]:
    """The row of one sample series: its medians on both sides and their relative change."""
    return _row(record, "samples", name, s.base_median, s.head_median, verdict, note, change=s.change, **extra)


def _sample_rows(b: dict, h: dict, rules: Rules) -> list[dict]:
    rows = []
    bs, hs = b.get("samples") or {}, h.get("samples") or {}
    for name in bs.keys() & hs.keys():
        base, head = _clean(bs[name]), _clean(hs[name])
        if not base or not head:
            continue
        path = f"samples.{name}"
        explicit = rules.threshold(h, path)
        s = shift(base, head)
        if explicit is None and not repeated(name):  # a curve or a sweep: listed, gated only when named
            if s.base_median != s.head_median:
                note = f"median {pct(s.change)} (a curve, not repeated measurements: not gated)"
                rows.append(_sample_row(h, name, s, "changed", note, better=better(name)))
            continue
        t = explicit or Threshold(
            path, -1 if better(name) == "higher" else 1, rules.min_effect, True, "the default minimum effect"
        )
        verdict, note = judge_shift(s, t, rules.alpha, len(base), len(head))
        ps, extra = process_shift(process_medians(b, name), process_medians(h, name)), {}
        if ps is not None:
            what = "minimum effect" if explicit is None else "threshold"
            verdict, note = judge_processes(verdict, note, s, ps, t, rules.alpha, what)
            extra = {
                "spread": ps.spread,
                "p_processes": ps.p_value,
                "processes": [ps.base_processes, ps.head_processes],
                "noisy": verdict == "inconclusive" and bool(too_noisy(ps, t, s.base_median, what)),
            }
        drift = machine_drift(_calibration(b), _calibration(h), rules.min_effect)
        if drift and verdict in ("regression", "improvement"):
            verdict, note, extra["noisy"] = "inconclusive", f"{note}; but {drift}", True
        rows.append(
            _sample_row(
                h,
                name,
                s,
                verdict,
                note,
                better="higher" if t.worse < 0 else "lower",
                p_value=s.p_value,
                threshold=t.text(),
                threshold_pattern=t.pattern if t.source != "the default minimum effect" else None,
                **extra,
            )
        )
    return rows


def _calibration(record: dict) -> float | None:
    value = (record.get("metrics") or {}).get("calibration_ms")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def process_medians(record: dict, name: str) -> list[float]:
    """The per-process medians a run recorded for a sample series (``metrics.processes.series``), or []."""
    series = ((record.get("metrics") or {}).get("processes") or {}).get("series") or {}
    entry = series.get(name) if isinstance(series, dict) else None
    return _clean(entry.get("medians")) if isinstance(entry, dict) else []


def _clean(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _metric_rows(b: dict, h: dict, rules: Rules) -> list[dict]:
    rows = []
    base, head = numeric_leaves(b.get("metrics") or {}), numeric_leaves(h.get("metrics") or {})
    for path in [p for p in head if p in base]:
        bv, hv = base[path], head[path]
        t = rules.threshold(h, path)
        change = (hv - bv) / abs(bv) if bv else None
        direction = ("higher" if t.worse < 0 else "lower") if t else better(path)
        if t is None:
            if bv != hv:
                rows.append(
                    _row(
                        h,
                        "metric",
                        path,
                        bv,
                        hv,
                        "changed",
                        _trend(change, bv, hv, direction),
                        change=change,
                        better=direction,
                    )
                )
            continue
        verdict, note = _judge_metric(b, h, path, t, bv, hv, rules.alpha)
        if verdict != "unchanged" or bv != hv:
            rows.append(
                _row(
                    h,
                    "metric",
                    path,
                    bv,
                    hv,
                    verdict,
                    note,
                    change=change,
                    better=direction,
                    threshold=t.text(),
                    threshold_pattern=t.pattern,
                )
            )
    return rows


def _trend(change: float | None, bv: float, hv: float, direction: str | None) -> str:
    delta = pct(change) if change is not None else f"{hv - bv:+.4g}"
    if direction is None:
        return delta
    good = (hv < bv) == (direction == "lower")
    return f"{delta} ({'better' if good else 'worse'}; {direction} is better)"


def _judge_metric(b: dict, h: dict, path: str, t: Threshold, bv: float, hv: float, alpha: float) -> tuple[str, str]:
    """A threshold on a metric; for a measured check its raw samples must confirm the shift."""
    if not t.breached(bv, hv):
        return "unchanged", f"{bv:.4g} -> {hv:.4g}: within {t.text()}"
    series = _series_for(path, b.get("samples") or {}, h.get("samples") or {})
    if not series:
        return "regression", f"{bv:.4g} -> {hv:.4g}: beyond {t.text()} (from {t.source})"
    drift = []
    for name in series:
        s = shift(_clean(b["samples"][name]), _clean(h["samples"][name]))
        # the series must get worse by its own measure: tokens/s falling shows as milliseconds rising
        same_way = s.change is not None and s.change * (-1 if better(name) == "higher" else 1) > 0
        if s.p_value is not None and s.p_value < alpha and same_way:
            ps = process_shift(process_medians(b, name), process_medians(h, name))
            confirmed = f"{bv:.4g} -> {hv:.4g}: beyond {t.text()}, confirmed by samples {name} (p = {s.p_value:.2g}"
            if ps is None or ps.p_value < alpha:
                confirmed += f", Welch p = {ps.p_value:.2g} on process medians)" if ps else ")"
                drift_note = machine_drift(_calibration(b), _calibration(h), t.amount if t.relative else 0.05)
                return ("inconclusive", f"{confirmed}; but {drift_note}") if drift_note else ("regression", confirmed)
            drift.append((ps, confirmed + f") but not across processes (Welch p = {ps.p_value:.2g})"))
    if drift:  # significant in pooled samples only: run-to-run drift, or too noisy to tell
        ps, note = drift[0]
        noisy = too_noisy(ps, t, bv, "threshold")
        return ("inconclusive", f"{note}; {noisy}") if noisy else ("within noise", f"{note}: drift")
    return "within noise", f"{bv:.4g} -> {hv:.4g}: beyond {t.text()}, but the raw samples show no significant shift"


def _series_for(path: str, bs: dict, hs: dict) -> list[str]:
    """The sample series behind a metric: one named in its path, else all of the record's series."""
    shared = [n for n in bs if n in hs and _clean(bs[n]) and _clean(hs[n])]
    named = [n for n in shared if n in path.split(".") or path.startswith(n + ".")]
    return named or shared


def _row_label(row: dict, index: int) -> str:
    for key in ("variant", "name", "label", "config"):
        if isinstance(row.get(key), str):
            return row[key]
    return f"batch_size={row['batch_size']}" if "batch_size" in row else str(index)
