"""Summaries of one series of timed samples: median, quartiles, the distribution-free CI of the
median, and the percentiles the sample size supports. Pure (pytest-benchmark's ``Stats`` for the
quartiles, so llmcheck's numbers agree with pytest-benchmark's), torch-free.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

PERCENTILE_CONFIDENCE = 0.99  # MLPerf LoadGen's early-stopping confidence: p90 needs n >= 44, p99 n >= 459


def median_ci(ordered: list[float], confidence: float) -> tuple[float, float] | None:
    """Distribution-free CI of the median from order statistics: [x(k), x(n-k+1)] where k is the
    largest rank with P(Binomial(n, 1/2) <= k-1) <= (1-confidence)/2. None when n is too small.

    The binomial tail is summed upwards from 6 standard deviations below n/2 (the mass below is
    under 1e-9), so a call costs O(sqrt(n)), not O(n)."""
    n = len(ordered)
    half = (1 - confidence) / 2
    k = max(0, int(n / 2 - 6 * math.sqrt(n) / 2))
    term = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))
    tail = 0.0
    while k < n // 2 and tail + term <= half:
        tail += term
        term *= (n - k) / (k + 1)  # P(B = k+1) from P(B = k)
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def min_samples_for(quantile: float) -> int:
    """Samples needed before a percentile is reported: the smallest n with q^n <= 1 - c (MLPerf)."""
    return math.ceil(math.log(1 - PERCENTILE_CONFIDENCE) / math.log(quantile))


def summarize(samples_ms: list[float], confidence: float) -> dict[str, Any]:
    """Median, quartiles, IQR/median, CV, the CI of the median and the percentiles n supports."""
    from pytest_benchmark.stats import Stats

    s = Stats()
    s.data = list(samples_ms)
    n = s.rounds
    ci = median_ci(s.sorted_data, confidence) if n else None
    med = s.median if n else float("nan")
    out = {
        "n": n,
        "median_ms": med,
        "mean_ms": s.mean if n else float("nan"),
        "min_ms": s.min if n else float("nan"),
        "max_ms": s.max if n else float("nan"),
        "q1_ms": s.q1 if n else float("nan"),
        "q3_ms": s.q3 if n else float("nan"),
        "iqr_ms": s.iqr if n else float("nan"),
        "ci_low_ms": ci[0] if ci else None,
        "ci_high_ms": ci[1] if ci else None,
    }
    out["iqr_ratio"] = out["iqr_ms"] / med if n and med > 0 else float("inf")
    out["cv"] = s.stddev / s.mean if n > 1 and s.mean > 0 else 0.0
    out["ci_rel"] = max(med - ci[0], ci[1] - med) / med if ci and med > 0 else None
    cuts = statistics.quantiles(s.data, n=100, method="inclusive") if n > 1 else []
    for q in (90, 99):
        need = min_samples_for(q / 100)
        out[f"p{q}_ms"] = cuts[q - 1] if n >= need else None
        out[f"p{q}_note"] = "" if n >= need else f"p{q} not reported: n={n} < {need} samples"
    return out
