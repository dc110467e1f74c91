"""Between-process statistics of timed series measured in several worker processes. Pure, torch-free.

Run-to-run drift on shared machines exceeds within-run noise (docs/design.md §4): six back-to-back runs
of one forward pass gave medians 9% apart while each run was tight. One process's samples cannot
show that drift, so a series is measured in several processes and summarised here:

- per-process medians and sizes (the pooled samples keep process order, so sizes split them back);
- the between-process spread: (max - min) / median of the per-process medians, and the standard
  deviation of their logarithms (``sd_log``, about the relative SD; Welch's test in
  ``llmcheck compare`` works on the same logarithms);
- the within-process spread: the median over processes of IQR / median;
- the CI of the median, widened for between-process variance: the envelope (union) of the
  distribution-free order-statistic CI of the pooled samples (within-process noise) and a
  Student t interval over the logarithms of the per-process medians (between-process noise). With k processes the t
  interval has k - 1 degrees of freedom, so 2 or 3 processes give an honest, wide interval: a
  pooled interval alone would treat samples from one process as independent of its drift.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from llmcheck.stats.samples import summarize
from llmcheck.stats.student_t import t_two_sided


def series_spread(per_process: list[list[float]]) -> dict[str, Any]:
    """Per-process medians and sizes, between- and within-process spread of one series."""
    parts = [list(s) for s in per_process if s]
    medians = [statistics.median(s) for s in parts]
    out: dict[str, Any] = {
        "processes": len(parts),
        "medians": medians,
        "sizes": [len(s) for s in parts],
        "spread": None,
        "sd_log": None,
        "within_iqr_ratio": None,
    }
    if not parts:
        return out
    middle = statistics.median(medians)
    if len(medians) > 1 and middle > 0:
        out["spread"] = (max(medians) - min(medians)) / middle
        if min(medians) > 0:
            out["sd_log"] = statistics.stdev(math.log(m) for m in medians)
    # quartiles as samples.summarize takes them (pytest-benchmark's Stats), so the numbers agree
    out["within_iqr_ratio"] = statistics.median(summarize(s, 0.95)["iqr_ratio"] for s in parts)
    return out


def between_ci(medians: list[float], confidence: float) -> tuple[float, float] | None:
    """Student t interval over per-process medians, on their logarithms (timings vary by factors,
    and the bounds stay positive): geometric mean x exp(±t sd_log / sqrt(k)). None with fewer than
    two processes or a median that is not positive."""
    k = len(medians)
    if k < 2 or min(medians) <= 0:
        return None
    logs = [math.log(m) for m in medians]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = t_two_sided(confidence, k - 1) * sd / math.sqrt(k)
    return math.exp(mean - half), math.exp(mean + half)


def merge_timing(series: list[dict[str, Any]], samples: list[list[float]]) -> dict[str, Any]:
    """One timed series (``llmcheck.measuring.timing.Measurement.to_metrics`` shape) from its per-process versions
    and raw samples: statistics of the pooled samples, the CI widened as the module says, valid
    only when every process's series was valid."""
    first = series[0]
    pooled = [x for s in samples for x in s]
    out = {**first, **summarize(pooled, first["confidence"])}
    spread = series_spread(samples)
    within = (out["ci_low_ms"], out["ci_high_ms"]) if out["ci_low_ms"] is not None else None
    between = between_ci(spread["medians"], first["confidence"])
    bounds = [b for b in (within, between) if b is not None]
    if bounds:
        out["ci_low_ms"], out["ci_high_ms"] = min(b[0] for b in bounds), max(b[1] for b in bounds)
        med = out["median_ms"]
        out["ci_rel"] = max(med - out["ci_low_ms"], out["ci_high_ms"] - med) / med if med > 0 else None
    out["ci_method"] = (
        "envelope of the pooled order-statistic CI and a t interval over log per-process medians"
        if between
        else "order statistics of the pooled samples"
    )
    out["invalid_reasons"] = [f"process {i + 1}: {r}" for i, s in enumerate(series) for r in s["invalid_reasons"]]
    out["valid"] = all(s["valid"] for s in series)
    out["stop"] = "/".join(s["stop"] for s in series)
    out["converged"] = all(s["converged"] for s in series)
    out.update(
        processes=spread["processes"],
        process_medians_ms=spread["medians"],
        between_spread=spread["spread"],
        between_sd_log=spread["sd_log"],
        within_iqr_ratio=spread["within_iqr_ratio"],
    )
    return out


def describe(series: dict[str, Any]) -> tuple[str, str]:
    """(``over 3 processes``, ``between-process spread 4.1%``) for messages; empty for a series
    measured in one process only."""
    k = series.get("processes")
    if not k:
        return "", ""
    if k < 2 or series.get("between_spread") is None:
        return f"in {k} process", ""
    return f"over {k} processes", f"between-process spread {series['between_spread']:.1%}"
