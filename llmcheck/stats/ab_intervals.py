"""Statistics of an A/B run: the HEAD/BASE ratio from per-pair ratios, its interval and the verdict.

Each pair is one BASE process and one HEAD process run back to back, so a slow drift of the
machine (other jobs, frequency scaling, thermal state) multiplies both medians of a pair and
cancels in their ratio. What is left is each process's own offset (memory layout, scheduling:
docs/design.md §4 measured 9 % between back-to-back processes), which is independent between pairs and
shrinks as pairs accumulate.

Why a Student-t interval on the log ratios (a geometric mean) rather than the alternatives:
- The quantity is multiplicative (a 20 % slower step is a ratio of 1.2 at any speed), and the log
  of a ratio of two process medians is close to symmetric and normal: each median already pools
  tens to hundreds of calls. A t-interval then has its nominal coverage at the small pair counts
  an A/B run can afford (5-20); a percentile bootstrap under-covers there (about 89 % for a
  nominal 95 % at n = 8) and the distribution-free interval of a median needs n >= 6 before it
  exists at 95 % and stays wide.
- A disturbed pair (a process that shared its core with another job) inflates the standard
  deviation, so the interval widens and the verdict falls back to "no significant change": the
  safe direction for a CI gate, which must not cry wolf. tests/test_ab_statistics.py and
  benchmarks/ab_sensitivity.py measure the resulting false-alarm rate on drifting data.
The quantile comes from SciPy (a dependency already, for ``llmcheck compare``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from llmcheck.stats.student_t import t_two_sided

CONFIDENCE = 0.95
MIN_PAIRS_FOR_INTERVAL = 3  # two pairs give a t-interval 12.7 standard errors wide: no information
VERDICTS = ("regression", "improvement", "no significant change", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """The ratio HEAD/BASE over ``n`` pairs: geometric mean, its CI, and the CI's relative half-width."""

    n: int
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    half_width: float | None = None  # exp(t * s / sqrt(n)) - 1: the interval is ratio / (1 + hw) .. ratio * (1 + hw)
    median_ratio: float | None = None
    log_sd: float | None = None  # standard deviation of the log pair ratios
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        return asdict(self)


def estimate(ratios: list[float], confidence: float = CONFIDENCE) -> Estimate:
    """Geometric mean of the pair ratios with a t-interval on their logs (see the module docstring)."""
    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    n = len(logs)
    if n == 0:
        return Estimate(0, confidence=confidence)
    centre, median = math.exp(statistics.fmean(logs)), statistics.median(ratios)
    if n < MIN_PAIRS_FOR_INTERVAL:
        return Estimate(n, centre, median_ratio=median, confidence=confidence)
    sd = statistics.stdev(logs)
    h = t_two_sided(confidence, n - 1) * sd / math.sqrt(n)
    return Estimate(n, centre, centre * math.exp(-h), centre * math.exp(h), math.expm1(h), median, sd, confidence)


def detectable(est: Estimate, threshold: float) -> tuple[float, float] | None:
    """The smallest slowdown and speedup this run would have called (as fractions, e.g. 0.12):
    a true change c is called once the whole interval clears the threshold, i.e. when
    (1 + c) / (1 + half_width) > 1 + threshold. None without an interval."""
    if est.half_width is None:
        return None
    grow = 1 + est.half_width
    return (1 + threshold) * grow - 1, 1 - (1 - threshold) / grow


def verdict(est: Estimate, threshold: float) -> str:
    """regression when the whole interval lies above 1 + threshold, improvement when wholly below
    1 - threshold, otherwise no significant change; inconclusive with too few pairs for an interval."""
    if est.ci_low is None:
        return "inconclusive"
    if est.ci_low > 1 + threshold:
        return "regression"
    if est.ci_high < 1 - threshold:
        return "improvement"
    return "no significant change"


def precise_enough(est: Estimate, precision: float, min_pairs: int) -> bool:
    """Whether sampling may stop: at least ``min_pairs`` pairs and a half-width within ``precision``."""
    return est.n >= min_pairs and est.half_width is not None and est.half_width <= precision


def explain(est: Estimate, threshold: float) -> str:
    """One line: the verdict with the ratio, its interval and what the run could have detected."""
    v = verdict(est, threshold)
    if v == "inconclusive":
        return (
            f"inconclusive: {est.n} pair{'s' if est.n != 1 else ''}, an interval needs at least "
            f"{MIN_PAIRS_FOR_INTERVAL} (raise the budget)"
        )
    ci = f"ratio {est.ratio:.3f} ({est.confidence:.0%} CI {est.ci_low:.3f}-{est.ci_high:.3f}, {est.n} pairs)"
    if v == "regression":
        return f"regression: {ci} lies wholly above +{threshold:.0%}"
    if v == "improvement":
        return f"improvement: {ci} lies wholly below -{threshold:.0%}"
    slow, fast = detectable(est, threshold)
    return f"no significant change: {ci}; could have detected changes beyond +{slow:.1%} / -{fast:.1%}"
