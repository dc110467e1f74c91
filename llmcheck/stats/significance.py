"""Is a shift between two sample series real? Mann-Whitney U (SciPy) plus a minimum effect size.

A shift counts only when it is both significant (two-sided Mann-Whitney U, p < alpha) and larger
than the threshold on the median; with too few samples for the test to ever reach alpha, the
answer is "inconclusive", never "no change" (asv's criterion: the smallest attainable exact p).

When both runs measured a series in several worker processes (llmcheck.isolation.processes), the test on
pooled samples is not enough: run-to-run drift moves a whole process's samples together, which
the rank test takes for a real shift (docs/design.md §4). The per-process medians then decide too: a
shift counts only if Welch's t test on their logarithms also gives p < alpha (a rank test on 3 vs
3 medians could never reach alpha 0.01: its smallest p is 0.1). And when either run's
between-process spread ((max - min) / median of its per-process medians) exceeds the threshold,
a change of that size cannot be told from drift: the row is "inconclusive", too noisy to compare
(`llmcheck ab` measures both versions interleaved in one session instead).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, replace
from typing import Protocol


class Threshold(Protocol):
    """The minimum effect a shift is judged against (``llmcheck.reports.compare.Threshold`` is one)."""

    worse: int  # +1: an increase is worse; -1: a decrease is worse
    amount: float
    relative: bool

    def breached(self, base: float, head: float) -> bool: ...

    def text(self) -> str: ...


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
        return (
            ("regression", f"{effect} < {alpha:g} and beyond {t.text()}")
            if significant
            else ("within noise", f"{effect}: beyond {t.text()} but not significant (alpha {alpha:g})")
        )
    if better_ and significant:
        return "improvement", f"{effect}, beyond {reverse(t).text()}"
    return "unchanged", f"{effect}: within {t.text()}"


@dataclass
class ProcessShift:
    """A series compared through its per-process medians (both runs measured several processes)."""

    base_processes: int
    head_processes: int
    change: float  # ratio of the geometric means of the medians, minus 1
    p_value: float  # Welch's t test on the log medians, two-sided
    spread: float  # the larger of the two runs' between-process spreads


def range_ratio(medians: list[float]) -> float:
    return (max(medians) - min(medians)) / statistics.median(medians)


def process_shift(base: list[float], head: list[float]) -> ProcessShift | None:
    """None unless both runs have at least two positive per-process medians."""
    from scipy.stats import ttest_ind

    if len(base) < 2 or len(head) < 2 or min(base + head) <= 0:
        return None
    lb, lh = [math.log(v) for v in base], [math.log(v) for v in head]
    if max(lb) == min(lb) and max(lh) == min(lh):  # no spread on either side: a difference is exact
        p = 1.0 if lb[0] == lh[0] else 0.0
    else:
        p = float(ttest_ind(lb, lh, equal_var=False).pvalue)
    change = math.exp(statistics.fmean(lh) - statistics.fmean(lb)) - 1
    return ProcessShift(len(base), len(head), change, p, max(range_ratio(base), range_ratio(head)))


def noise_limit(t: Threshold, base_median: float) -> float:
    """The threshold as a relative change: what the between-process spread is held against."""
    if t.relative:
        return t.amount
    return t.amount / abs(base_median) if base_median else math.inf


def too_noisy(ps: ProcessShift, t: Threshold, base_median: float, what: str) -> str:
    """Why the two runs are too noisy to compare, or "" when they are not."""
    limit = noise_limit(t, base_median)
    if ps.spread <= limit:
        return ""
    return (
        f"between-process spread {ps.spread:.1%} exceeds the {limit:.1%} {what}: too noisy to compare; use llmcheck ab"
    )


def judge_processes(
    verdict: str, note: str, s: Shift, ps: ProcessShift, t: Threshold, alpha: float, what: str = "threshold"
) -> tuple[str, str]:
    """The verdict on pooled samples (judge_shift), checked against the per-process medians."""
    test = f"Welch p = {ps.p_value:.2g} on {ps.base_processes} vs {ps.head_processes} process medians"
    noisy = too_noisy(ps, t, s.base_median, what)
    if verdict in ("regression", "improvement"):
        if ps.p_value < alpha:
            return verdict, f"{note}; {test}, between-process spread {ps.spread:.1%}"
        if noisy:
            return "inconclusive", f"{note}, but {test}; {noisy}"
        return (
            "within noise" if verdict == "regression" else "unchanged"
        ), f"{note}, but not significant across processes ({test}, between-process spread {ps.spread:.1%}): drift"
    if noisy:
        return "inconclusive", f"{note}; {noisy}"
    return verdict, f"{note}; between-process spread {ps.spread:.1%}"


def machine_drift(base_ms: float | None, head_ms: float | None, limit: float) -> str:
    """Why a shift cannot be blamed on the model, or "": the fixed calibration workload each run
    timed beside the model (``metrics.calibration_ms``, llmcheck.measuring.perf.calibrate) moved by more than
    ``limit``, so the machine itself ran at another speed in one of the two runs. Every process of a
    run can be slow together (a busy neighbour, a throttled CPU), which no between-process spread
    inside that run shows."""
    if not base_ms or not head_ms or base_ms <= 0 or head_ms <= 0:
        return ""
    change = head_ms / base_ms - 1
    if abs(change) <= limit:
        return ""
    return (
        f"the machine itself ran {'slower' if change > 0 else 'faster'} in HEAD's run: the calibration workload "
        f"(a fixed matmul timed beside the model) went {base_ms:.3g} -> {head_ms:.3g} ms ({change:+.1%}, beyond "
        f"{limit:.1%}): run-to-run drift, too noisy to compare; use llmcheck ab"
    )


def reverse(t: Threshold) -> Threshold:
    """The same threshold the other way: how far a series must move to count as an improvement."""
    return replace(t, worse=-t.worse)


def pct(change: float | None) -> str:
    return "n/a" if change is None else f"{change:+.1%}"
