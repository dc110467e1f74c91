"""Change points in a metric's history: where the series shifts beyond its run-to-run noise.

Each run of ``main`` contributes one value (a timing's median, say); consecutive runs differ by the
machine's drift as well as by code. The method, chosen to be simple, robust and explainable in one
sentence on the page:

- Work on logarithms, so a shift is a ratio (+10 % at 2 ms and at 20 ms alike).
- Noise: the run-to-run spread, estimated robustly from successive differences,
  ``sigma = 1.4826 * median(|x[i+1] - x[i]|) / sqrt(2)``. A step changes one difference, a slow
  creep adds a little to each, so neither inflates the estimate the way a plain standard
  deviation over the whole series would; one disturbed run moves two differences, which the
  median also ignores.
- Split test: at every run t with ``window`` runs on each side, compare the median of the next
  ``window`` runs with the median of the previous ``window``. The median of k normal values has a
  standard error of about ``sqrt(pi / 2) * sigma / sqrt(k)``, so the difference of the two has
  ``se = sigma * sqrt(pi / k)``. A change point is a split whose ``|difference| / se`` exceeds
  ``z`` and whose relative shift exceeds ``min_effect``; of neighbouring flagged splits (within a
  window) the strongest is kept. It is confirmed once ``window`` runs sit on the new level.
- Creep: a drift spread over many commits may never make one split stand out, or make several
  small ones. The last ``window`` runs are also compared with the first ``window`` by the same
  rule; when that shift is significant and no change point explains half of it, the series is
  flagged as creeping (and the smaller change points the same way are reported as the creep).

The defaults (window 5, z 4) were chosen on simulated flat series (2000 each) of 12-40 runs with
3-9 % lognormal scatter, or with 5-10 % of runs disturbed by +30 %: at most 1.4 % of series got a
false change point (0.5 % below 20 runs). A 20 % step in the middle of 12 runs with 3 % scatter is
found, within one run of where it is, in 94 % of series (54 % at 5 % scatter; 10 % steps need longer
windows); a creep of 1 % per run over 20 runs in 92 %. tests/test_history.py keeps a smaller
version of these numbers. Change points are evidence to look at, not a gate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

WINDOW = 5
Z = 4.0
MIN_EFFECT = 0.05
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Shift:
    """A shift of the series' level: at run ``index`` (the first run on the new level), or, for a
    creep, between the first and the last ``window`` runs."""

    index: int
    before: float  # the median level before (in the series' unit)
    after: float
    change: float  # after / before - 1
    score: float  # |log shift| in standard errors
    kind: str = "step"  # step or creep


def noise(values: list[float]) -> float | None:
    """Run-to-run spread of log values (robust, from successive differences); None below 3 values."""
    logs = [math.log(v) for v in values if v > 0]
    if len(logs) < 3:
        return None
    return MAD_TO_SD * statistics.median(abs(b - a) for a, b in zip(logs, logs[1:])) / math.sqrt(2)


def _split(logs: list[float], before: slice, after: slice, sigma: float, k: int) -> tuple[float, float, float]:
    """(median before, median after, score); the score is 0 unless the shift is consistent: all but
    one run of each side lie on its own side of the midpoint between the two medians, so two
    disturbed runs in a window of four cannot fake a step."""
    a, b = logs[before], logs[after]
    lo, hi = statistics.median(a), statistics.median(b)
    mid, up = (lo + hi) / 2, hi > lo
    consistent = min(sum((x > mid) == up for x in b), sum((x < mid) == up for x in a)) >= len(b) - 1
    se = max(sigma, 1e-9) * math.sqrt(math.pi / k)
    return lo, hi, abs(hi - lo) / se if consistent else 0.0


def change_points(
    values: list[float], window: int = WINDOW, z: float = Z, min_effect: float = MIN_EFFECT
) -> list[Shift]:
    """The steps in ``values`` (one value per run, oldest first), then a creep if one is left over."""
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError("change points need positive, finite values")
    k = min(window, len(values) // 2)
    sigma = noise(values)
    if k < 2 or sigma is None:
        return []
    logs = [math.log(v) for v in values]
    flagged = []
    for t in range(k, len(logs) - k + 1):
        lo, hi, score = _split(logs, slice(t - k, t), slice(t, t + k), sigma, k)
        if score > z and abs(math.expm1(hi - lo)) > min_effect:
            shift = Shift(t, math.exp(lo), math.exp(hi), math.expm1(hi - lo), score)
            a, b = logs[t - k : t], logs[t : t + k]
            flagged.append(((_separation(a, b), abs(statistics.fmean(b) - statistics.fmean(a))), shift))
    # Neighbouring splits see the same step (a window holding one run of the other level keeps its
    # median): keep the one whose two windows separate best by rank, then by their means.
    steps = [s for key, s in flagged if all(key >= other for other, o in flagged if abs(o.index - s.index) < k)]
    creep = _creep(logs, sigma, k, z, min_effect)
    if creep is None or any(abs(s.change) >= abs(creep.change) / 2 for s in steps):
        return steps
    # No step explains half of the drift: the smaller steps the same way are the creep's parts.
    return [s for s in steps if (s.change > 0) != (creep.change > 0)] + [creep]


def _separation(before: list[float], after: list[float]) -> float:
    """How completely the two windows separate: the Mann-Whitney U of after > before (ties half),
    either way, as a fraction of all pairs (1.0: every run of one side beyond every run of the other)."""
    u = sum((b > a) + 0.5 * (b == a) for a in before for b in after) / (len(before) * len(after))
    return max(u, 1 - u)


def _creep(logs: list[float], sigma: float, k: int, z: float, min_effect: float) -> Shift | None:
    if len(logs) < 3 * k:  # the two ends must not be neighbours, or it is a step
        return None
    lo, hi, score = _split(logs, slice(0, k), slice(len(logs) - k, len(logs)), sigma, k)
    if score > z and abs(math.expm1(hi - lo)) > min_effect:
        return Shift(len(logs) - k, math.exp(lo), math.exp(hi), math.expm1(hi - lo), score, "creep")
    return None
