"""Streaming statistics of a split's token sequences for the `data` check (worker side).

One pass per split: exact duplicates (8-byte BLAKE2 digests of each sequence), hashed n-grams of
training sequences in a Bloom filter (rbloom: a maintained Rust implementation with a set-like
API; 2.25 bytes per n-gram as sized here at a 0.1% false-positive rate, where a Python set of the
same hashes costs 68-82: benchmarks/data_check.py), length and token histograms, out-of-vocabulary ids.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Mapping

import numpy as np

from llmcheck.target.batches import batches, hook_name
from llmcheck.target.model import ContractError

_P = 1_000_003  # multiplier of the polynomial n-gram hash, mod 2**64
_SHOW_TOKENS = 12  # token ids shown per reported example


@functools.lru_cache(maxsize=8)
def _powers(n: int) -> np.ndarray:
    return np.array([pow(_P, n - 1 - k, 2**64) for k in range(n)], dtype=np.uint64)


def sequence_hash(row: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True)


def ngram_hashes(row: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every n-gram of ``row`` (int64), empty when the row is shorter than n."""
    if len(row) < n:
        return np.empty(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(row.astype(np.uint64) + np.uint64(1), n)
    h = (windows * _powers(n)).sum(axis=1, dtype=np.uint64)  # wraps mod 2**64 by design
    h ^= h >> np.uint64(31)  # splitmix64 finaliser: spread the polynomial's low-entropy bits
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    return h.view(np.int64)


def rows_of(target, batch, what: str) -> list[np.ndarray]:
    """The token-id rows of a batch, padding (attention_mask == 0) removed."""
    tokens = target.tokens(batch)
    if tokens is None:
        raise ContractError(
            f"{what} yields batches without integer token ids; the data check reads 'input_ids' "
            f"or a batch that is itself a LongTensor"
        )
    tokens = tokens.detach().cpu().reshape(tokens.shape[0], -1) if tokens.dim() > 1 else tokens.detach().cpu()[None]
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is not None:
        mask = mask.detach().cpu().reshape(tokens.shape).bool()
        return [tokens[i][mask[i]].numpy().astype(np.int64) for i in range(tokens.shape[0])]
    return [tokens[i].numpy().astype(np.int64) for i in range(tokens.shape[0])]


def iter_rows(ctx, split: str, limit: int):
    what = hook_name(ctx.target, split)
    count = 0
    for b, batch in enumerate(batches(ctx.target, split, device=False)):
        ctx.progress(split=split, batch=b, sequences=count)
        for row in rows_of(ctx.target, batch, what):
            if count >= limit:
                return
            yield count, row
            count += 1


def js_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0: same distribution, 1: disjoint) of two count vectors.

    Written out (six lines) rather than taken from scipy, which llmcheck does not otherwise need.
    """
    size = max(len(a), len(b))
    p, q = (np.pad(np.asarray(x, float), (0, size - len(x))) for x in (a, b))
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl = lambda x: float(np.sum(x[x > 0] * np.log2(x[x > 0] / m[x > 0])))  # noqa: E731
    return max(0.0, (kl(p) + kl(q)) / 2)


class SplitStats:
    """Everything the data check needs from one split, gathered row by row."""

    def __init__(self, vocab: int | None, p, keep_ngrams: bool = False, overlap: Overlap | None = None):
        self.vocab, self.p, self.keep_ngrams, self.overlap = vocab, p, keep_ngrams, overlap
        self.rows = self.duplicates = self.oov = 0
        self.first_duplicate, self.first_oov, self.bloom = None, None, None
        self.seen: dict[int, int] = {}  # sequence digest -> first row with it
        self.lengths: Counter = Counter()
        self.halves = [np.zeros(vocab or 1, np.int64), np.zeros(vocab or 1, np.int64)]

    def add(self, i: int, row: np.ndarray) -> None:
        self.rows += 1
        digest = sequence_hash(row)
        if digest in self.seen:
            self.duplicates += 1
            self.first_duplicate = self.first_duplicate or [i, self.seen[digest]]
        else:
            self.seen[digest] = i
        self.lengths[len(row)] += 1
        self._count(i, row)
        if self.keep_ngrams:
            self._bloom(row).update(ngram_hashes(row, self.p.ngram).tolist())
        if self.overlap is not None:
            self.overlap.add(i, row, digest)

    def _count(self, i: int, row: np.ndarray) -> None:
        bad = (row < 0) | (row >= self.vocab) if self.vocab else row < 0
        if bad.any():
            self.oov += int(bad.sum())
            pos = int(np.flatnonzero(bad)[0])
            self.first_oov = self.first_oov or {"row": i, "position": pos, "id": int(row[pos])}
        ok = row[~bad]
        counts = self.halves[i % 2]
        if ok.size and ok.max() >= len(counts):  # vocabulary unknown: grow
            self.halves = [np.pad(h, (0, int(ok.max()) + 1 - len(h))) for h in self.halves]
            counts = self.halves[i % 2]
        counts += np.bincount(ok, minlength=len(counts))

    def _bloom(self, row: np.ndarray):
        if self.bloom is None:
            from rbloom import Bloom

            per_row = max(1, len(row) - self.p.ngram + 1)
            self.capacity = max(10_000, int(1.25 * self.p.max_sequences * per_row))
            self.bloom = Bloom(self.capacity, self.p.bloom_error_rate)
        return self.bloom

    @property
    def counts(self) -> np.ndarray:
        size = max(len(h) for h in self.halves)
        return sum(np.pad(h, (0, size - len(h))) for h in self.halves)

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "tokens": int(self.counts.sum()) + self.oov,
            "duplicates": self.duplicates,
            "first_duplicate": self.first_duplicate,
            "oov": self.oov,
            "first_oov": self.first_oov,
            "lengths": {str(k): v for k, v in sorted(self.lengths.items())},
        }

    def length_jsd(self, other: SplitStats) -> float:
        keys = sorted(set(self.lengths) | set(other.lengths))
        return js_divergence(np.array([self.lengths[k] for k in keys]), np.array([other.lengths[k] for k in keys]))

    def token_jsd(self, other: SplitStats) -> float:
        return js_divergence(self.counts, other.counts)

    def halves_jsd(self) -> float:
        """Token JSD between the even and odd training rows: the sampling-noise floor for token_jsd."""
        return js_divergence(*self.halves)

    def bloom_info(self) -> dict:
        if self.bloom is None:
            return {}
        return {
            "capacity": self.capacity,
            "approx_items": int(self.bloom.approx_items),
            "bytes": self.bloom.size_in_bits // 8,
            "error_rate": self.p.bloom_error_rate,
        }


class Overlap:
    """Eval sequences that duplicate training data: exact (same digest) or near (n-grams in train)."""

    def __init__(self, train: SplitStats, p):
        self.train, self.p = train, p
        self.exact = self.near = 0
        self.examples: list[dict] = []
        self._pending: list[tuple[dict, set]] = []  # near duplicates whose train row is still unknown

    def add(self, i: int, row: np.ndarray, digest: int) -> None:
        j = self.train.seen.get(digest)
        if j is not None:
            self.exact += 1
            self._keep({"eval_row": i, "train_row": j, "kind": "exact", "seen": 1.0, "closest_shared": 1.0})
            return
        grams = np.unique(ngram_hashes(row, self.p.ngram))
        if self.train.bloom is None or not len(grams):
            return
        seen = sum(g in self.train.bloom for g in grams.tolist()) / len(grams)
        if seen >= self.p.near_duplicate:
            self.near += 1
            example = self._keep({"eval_row": i, "train_row": None, "kind": "near", "seen": seen})
            if example is not None:
                self._pending.append((example, set(grams.tolist())))

    def _keep(self, example: dict) -> dict | None:
        if len(self.examples) >= self.p.show:
            return None
        self.examples.append(example)
        return example

    def summary(self, ctx, p) -> dict:
        """Counts and the first examples; near duplicates get their closest train row in a second pass."""
        if self._pending:
            best = [(-1, 0)] * len(self._pending)  # (train row, shared n-grams)
            for j, row in iter_rows(ctx, "train", p.max_sequences):
                grams = set(ngram_hashes(row, p.ngram).tolist())
                for k, (_, wanted) in enumerate(self._pending):
                    shared = len(grams & wanted)
                    if shared > best[k][1]:
                        best[k] = (j, shared)
            for (example, wanted), (j, shared) in zip(self._pending, best):
                example["train_row"] = j
                example["closest_shared"] = shared / len(wanted)
        return {"overlap_exact": self.exact, "overlap_near": self.near, "overlap_examples": self.examples}


def scan(ctx, split: str, stats: SplitStats, p) -> None:
    """Feed up to ``max_sequences`` rows of ``split`` to ``stats``; keep the shown rows' first ids."""
    overlap = stats.overlap
    for i, row in iter_rows(ctx, split, p.max_sequences):
        stats.add(i, row)
        if overlap is not None:
            for example in overlap.examples:
                if example["eval_row"] == i:
                    example["tokens"] = [int(x) for x in row[:_SHOW_TOKENS]]
