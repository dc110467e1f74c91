"""Random-window structure of a split, and the baseline of train against itself (worker side).

nanoGPT's ``get_batch`` draws fixed-length windows at random start positions of one token stream,
with replacement. Two windows whose starts are d apart (0 < d <= L - n) overlap by L - d >= n
tokens: the last L - d tokens of one are the first L - d of the other. Counting these *shifted
overlaps* among the distinct rows tells how many windows there were to draw from, independently
of the exact repeats it is then used to judge (llmcheck.checks.data.sampling). They are also how
two halves of train share text without being duplicated data, so the train-against-itself
baseline of near duplicates leaves them out: what is left is how often the text repeats itself.
"""

from __future__ import annotations

import numpy as np

from llmcheck.checks.data.ngrams import new_bloom, ngram_hashes, seen_fraction

_CHUNK = 512  # rows hashed at a time: bounds the n-gram matrix to 512 x L x 8 bytes
_CANDIDATES_PER_ROW = 64  # more prefix matches than this per row: the text repeats itself, not windows


def shifted_pairs(rows: list[np.ndarray], n: int) -> list[tuple[int, int, int]] | None:
    """(a, b, d) for each pair of distinct rows of one length L where b starts d tokens after a:
    ``rows[a][d:] == rows[b][:L - d]`` with 1 <= d <= L - n. None when prefix matches are so many
    (a text of few distinct n-grams) that the rows cannot be read as windows of one stream."""
    length, count = len(rows[0]), len(rows)
    if count < 2 or length - n < 1:
        return []
    block = np.stack(rows)
    firsts = ngram_hashes(block[:, :n], n)[:, 0]
    order = np.argsort(firsts, kind="stable")
    keys = firsts[order]
    pairs, budget = [], _CANDIDATES_PER_ROW * count
    for lo in range(0, count, _CHUNK):
        grams = ngram_hashes(block[lo : lo + _CHUNK], n)[:, 1:]  # offsets 1 .. L - n
        left, right = np.searchsorted(keys, grams, "left"), np.searchsorted(keys, grams, "right")
        rx, dx = np.nonzero(right > left)
        budget -= int((right - left)[rx, dx].sum())
        if budget < 0:
            return None
        for x, k in zip(rx.tolist(), dx.tolist()):
            a, d = lo + x, k + 1
            for b in order[left[x, k] : right[x, k]].tolist():
                if b != a and np.array_equal(block[a, d:], block[b, : length - d]):
                    pairs.append((a, b, d))
    return pairs


def window_stats(stats, n: int) -> tuple[dict, list | None]:
    """The split's random-window evidence for the judge, and the shifted pairs themselves."""
    found = {"distinct": len(stats.kept), "min_overlap": n}
    if len(stats.lengths) != 1:
        return {**found, "reason": f"its rows have {len(stats.lengths)} different lengths"}, None
    length = next(iter(stats.lengths))
    if length - n < 1:
        return {**found, "length": length, "reason": f"its {length}-token rows are no longer than ngram {n}"}, None
    pairs = shifted_pairs(stats.kept, n)
    if pairs is None:
        reason = f"its rows match each other at over {_CANDIDATES_PER_ROW} offsets a row: the text repeats itself"
        return {**found, "length": length, "reason": reason}, None
    return {**found, "length": length, "shifted": len(pairs)}, pairs


def baseline(train, n: int, pairs: list | None, near_duplicate: float) -> dict:
    """Near duplicates of the odd distinct training rows among the even ones, leaving out odd rows
    that overlap an even one as shifted windows: the rate at which eval rows that share no text
    with train still look like near duplicates (common phrases, boilerplate)."""
    even, odd = train.kept[0::2], train.kept[1::2]
    linked = {(a if a % 2 else b) // 2 for a, b, _ in pairs or () if (a - b) % 2}  # odd row of a cross-half pair
    bloom, _ = new_bloom(len(even), max(train.lengths, default=0) - n + 1, train.p)
    for row in even:
        bloom.update(ngram_hashes(row, n).tolist())
    kept = [row for k, row in enumerate(odd) if k not in linked]
    hits = sum(seen_fraction(row, n, bloom)[0] >= near_duplicate for row in kept)
    return {
        "rows": len(kept),
        "hits": int(hits),
        "left_out": len(odd) - len(kept),
        "windows_known": pairs is not None,
        "scale": len(train.kept) / max(len(even), 1),
    }
