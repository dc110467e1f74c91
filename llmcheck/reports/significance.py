"""Is a shift between two sample series real? Mann-Whitney U (SciPy) plus a minimum effect size.

A shift counts only when it is both significant (two-sided Mann-Whitney U, p < alpha) and larger
than the threshold on the median; with too few samples for the test to ever reach alpha, the
answer is "inconclusive", never "no change" (asv's criterion: the smallest attainable exact p).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmcheck.reports.compare import Threshold

# Sample series that are curves over iterations (memory per iteration, live tensors, training loss,
# learning rate) or sweeps, not repeated measurements of one quantity: their spread is not noise,
# so neither a box plot nor a rank test fits them. The report draws them as curves, and compare
# gates them only when a threshold names them.
CURVE = re.compile(r"rss|bytes|alloc|memory|live|tensors|loss|\blr\b", re.I)
SWEEP = re.compile(r"sweep", re.I)


def repeated(name: str) -> bool:
    """Whether a sample series holds repeated measurements of one quantity (timings, say)."""
    return not (CURVE.search(name) or SWEEP.search(name))


@dataclass
class Shift:
    """A sample series compared between runs: median shift and Mann-Whitney U p-value."""

    base_median: float
    head_median: float
    change: float | None  # relative change of the median; None when the base median is 0
    p_value: float | None  # None with fewer than two samples a side
    smallest_p: float  # the smallest p an exact test could give with these sizes


def shift(base: list[float], head: list[float]) -> Shift:
    from scipy.stats import mannwhitneyu

    bm, hm = statistics.median(base), statistics.median(head)
    change = (hm - bm) / abs(bm) if bm else None
    # The smallest two-sided p an exact test can give with these sizes (asv's criterion): when it is
    # not below alpha, no amount of shift could be called significant.
    smallest = 2 / math.comb(len(base) + len(head), len(base)) if base and head else 1.0
    p = float(mannwhitneyu(base, head, alternative="two-sided").pvalue) if len(base) >= 2 and len(head) >= 2 else None
    return Shift(bm, hm, change, p, min(1.0, smallest))


def judge_shift(s: Shift, t: Threshold, alpha: float, m: int, n: int) -> tuple[str, str]:
    """(verdict, note) for a shift against a threshold: regression, improvement, within noise,
    unchanged or inconclusive."""
    worse, better_ = t.breached(s.base_median, s.head_median), reverse(t).breached(s.base_median, s.head_median)
    if s.smallest_p >= alpha or s.p_value is None:
        few = f"too few samples ({m} vs {n}): the smallest attainable p is {s.smallest_p:.2g} >= alpha {alpha:g}"
        if worse:  # it might be a regression, and no test on these samples could tell
            return "inconclusive", f"median {pct(s.change)}, beyond {t.text()}; {few}"
        return "unchanged", f"median {pct(s.change)}, within {t.text()} ({few})"
    significant = s.p_value < alpha
    effect = f"median {pct(s.change)}, p = {s.p_value:.2g}"
    if worse:
        return ("regression", f"{effect} < {alpha:g} and beyond {t.text()}") if significant else \
            ("within noise", f"{effect}: beyond {t.text()} but not significant (alpha {alpha:g})")
    if better_ and significant:
        return "improvement", f"{effect}, beyond {reverse(t).text()}"
    return "unchanged", f"{effect}: within {t.text()}"


def reverse(t: Threshold) -> Threshold:
    """The same threshold the other way: how far a series must move to count as an improvement."""
    return replace(t, worse=-t.worse)


def pct(change: float | None) -> str:
    return "n/a" if change is None else f"{change:+.1%}"
