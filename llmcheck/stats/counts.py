"""Bounds on counts of chance events: Poisson and binomial tails. Pure, torch-free and numpy-free.

The data check asks two questions of this kind: how many repeated rows random sampling with
replacement can produce by chance, and how many eval rows may hit training n-grams when eval is
as clean as a fresh sample of the training text. Both run in the pytest process (no scipy, no
numpy there: llmcheck/stats/student_t.py says why).
"""

from __future__ import annotations

import math

_TAIL_SD = 12  # Poisson mass beyond 12 standard deviations (plus 12) of the mean is below 1e-30


def poisson_upper_quantile(mean: float, alpha: float) -> int:
    """The smallest q with P(X > q) <= alpha for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    i = max(0, math.floor(mean - _TAIL_SD * math.sqrt(mean) - _TAIL_SD))
    log_p = -mean + i * math.log(mean) - math.lgamma(i + 1)
    below = 0.0
    while True:
        below += math.exp(log_p)
        if 1 - below <= alpha:
            return i
        log_p += math.log(mean) - math.log(i + 1)
        i += 1


def poisson_cdf(k: int, mean: float) -> float:
    """P(X <= k) for X ~ Poisson(mean), summed in log space over the terms that matter."""
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    spread = _TAIL_SD * math.sqrt(mean) + _TAIL_SD
    start, stop = max(0, math.floor(mean - spread)), min(k, math.ceil(mean + spread))
    if start > k:
        return 0.0
    log_p = -mean + start * math.log(mean) - math.lgamma(start + 1)
    total = 0.0
    for i in range(start, stop + 1):
        total += math.exp(log_p)
        log_p += math.log(mean) - math.log(i + 1)
    return min(1.0, total)


def poisson_mean_upper(k: int, alpha: float) -> float:
    """The exact upper confidence limit of a Poisson mean from one observed count ``k``: the mean
    under which seeing ``k`` or fewer has probability ``alpha`` (Garwood's interval, one-sided)."""
    low, high = float(k), float(k) + 10.0
    while poisson_cdf(k, high) > alpha:
        low, high = high, high * 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if poisson_cdf(k, mid) > alpha else (low, mid)
    return high


def binomial_upper_quantile(n: int, rate: float, alpha: float) -> int:
    """The smallest q with P(X > q) <= alpha for X ~ Binomial(n, rate)."""
    if rate <= 0 or n <= 0:
        return 0
    if rate >= 1:
        return n
    below = 0.0
    for i in range(n + 1):
        log_p = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        below += math.exp(log_p + i * math.log(rate) + (n - i) * math.log1p(-rate))
        if 1 - below <= alpha:
            return i
    return n
