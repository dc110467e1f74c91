"""What random sampling predicts, for the data check's judgement. Pure, torch-free and numpy-free.

Exact repeats: m windows drawn with replacement from N equally likely start positions repeat
m - N (1 - (1 - 1/N)^m) ~ m^2 / 2N of them by chance (1600 from 43k: ~30). N is estimated from the
shifted overlaps among the m' distinct rows (llmcheck.checks.data.windows): a pair of starts is d
apart, for one given d, with probability 1/N, so E[shifted] = m'(m'-1)(L - n)/N for the
2(L - n) shifts counted. The bound uses the Poisson upper limit of that count (a smaller N, more
repeats) and then the Poisson upper quantile of the repeats, each at ``alpha``.

Eval overlap: the train-against-itself baseline (hits of b rows, scaled to the whole of train)
predicts the rate of eval rows that hit training n-grams without sharing text with train.
"""

from __future__ import annotations

import math

from llmcheck.stats.counts import binomial_upper_quantile, poisson_mean_upper, poisson_upper_quantile

MIN_SHIFTED = 10  # shifted overlaps that make a split random windows for the judgement of its repeats


def population(windows: dict, shifted: float) -> float:
    """Start positions the distinct rows were drawn from, given ``shifted`` overlapping pairs."""
    m = windows["distinct"]
    return m * (m - 1) * (windows["length"] - windows["min_overlap"]) / shifted


def expected_repeats(draws: int, population: float) -> float:
    """Rows that repeat an earlier one when ``draws`` are made with replacement from ``population``."""
    if population <= 1:
        return max(0.0, draws - 1.0)
    return draws + population * math.expm1(draws * math.log1p(-1 / population))


def repeats_by_chance(split: dict, alpha: float) -> dict | None:
    """Expected repeats and their upper bound for a split of random windows; None when its rows
    show fewer than MIN_SHIFTED shifted overlaps: then they are not read as random windows (chunks
    of a text that repeats a passage show one or two), and windows that few would repeat about
    shifted / 2(L - n) rows by chance, under one for L - n >= 5."""
    windows = split.get("windows") or {}
    if windows.get("shifted", 0) < MIN_SHIFTED:
        return None
    estimate = population(windows, windows["shifted"])
    smallest = population(windows, poisson_mean_upper(windows["shifted"], alpha))
    return {
        "population": estimate,
        "expected": expected_repeats(split["rows"], estimate),
        "bound": poisson_upper_quantile(expected_repeats(split["rows"], smallest), alpha),
    }


def overlap_by_chance(baseline: dict, eval_rows: int, alpha: float) -> dict:
    """The eval overlap rate that the train-against-itself baseline predicts, and its upper bound."""
    rate = min(1.0, baseline["scale"] * baseline["hits"] / baseline["rows"]) if baseline["rows"] else 0.0
    return {"rate": rate, "bound": binomial_upper_quantile(eval_rows, rate, alpha)}
