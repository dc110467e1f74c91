"""Student's t quantiles without scipy. Pure, torch-free and numpy-free.

Both the between-process interval of a spread measurement and the A/B pair-ratio interval need the
two-sided quantile; they share this one definition.
"""

from __future__ import annotations

import functools
import math


@functools.lru_cache(maxsize=1024)
def t_two_sided(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = confidence for Student's T with integer ``df``, by bisection on the
    closed form of Abramowitz & Stegun 26.7.3-4. Not scipy.stats.t: this runs in the pytest
    process, which imports no numpy (a plugin import stays cheap, and numpy's extension cannot be
    loaded twice in one process, which pytester's in-process runs would ask for)."""
    low, high = 0.0, 1.0
    while _t_central(high, df) < confidence:
        low, high = high, high * 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central(mid, df) < confidence else (low, mid)
    return (low + high) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's T with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2·4/(3·5) cos^4 + ...)), for df > 1
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= 2 * j / (2 * j + 1) * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1·3/(2·4) cos^4 + ...)
    for j in range(1, df // 2):
        term *= (2 * j - 1) / (2 * j) * c2
        total += term
    return s * total
