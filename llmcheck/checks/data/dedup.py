"""Streaming statistics of a split's token sequences for the `data` check (worker side).

One pass per split: exact duplicates (digests of each sequence, with how often each content
repeats), the distinct rows themselves in the narrowest integer type that holds the ids (1 byte a
token for a byte-level vocabulary, 2 up to 65536 ids: about what the Bloom filter costs per n-gram;
llmcheck.checks.data.windows reads them for the random-window analysis), length and token
histograms, out-of-vocabulary ids. Training n-grams then go into a Bloom filter that eval
sequences are looked up in (llmcheck.checks.data.ngrams).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from llmcheck.checks.data.ngrams import new_bloom, ngram_hashes, seen_fraction, sequence_hash

_SHOW_TOKENS = 12  # token ids shown per reported example


def rows_of(target, batch, what: str) -> list[np.ndarray]:
    """The token-id rows of a batch, padding (attention_mask == 0) removed."""
    from llmcheck.target.model import ContractError

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
    from llmcheck.target.batches import batches, hook_name  # torch: the hashing above runs without it

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

    def __init__(self, vocab: int | None, p, overlap: Overlap | None = None):
        self.vocab, self.p, self.overlap = vocab, p, overlap
        self.rows = self.duplicates = self.oov = 0
        self.first_duplicate, self.first_oov, self.bloom = None, None, None
        self.seen: dict[int, int] = {}  # sequence digest -> first row with it
        self.copies: Counter = Counter()  # sequence digest -> rows with it
        self.kept: list[np.ndarray] = []  # the distinct rows, in order
        self.kept_at: list[int] = []  # the row number of each
        self.lengths: Counter = Counter()
        self.halves = [np.zeros(vocab or 1, np.int64), np.zeros(vocab or 1, np.int64)]

    def add(self, i: int, row: np.ndarray) -> None:
        self.rows += 1
        digest = sequence_hash(row)
        self.copies[digest] += 1
        if digest in self.seen:
            self.duplicates += 1
            self.first_duplicate = self.first_duplicate or [i, self.seen[digest]]
        else:
            self.seen[digest] = i
            self.kept.append(row.astype(_narrowest(row)))
            self.kept_at.append(i)
        self.lengths[len(row)] += 1
        self._count(i, row)
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

    def index_ngrams(self, n: int) -> None:
        """Put the n-grams of every distinct row into the Bloom filter that eval rows are looked up in."""
        self.ngram = n
        self.bloom, self.capacity = new_bloom(len(self.kept), max(self.lengths, default=0) - n + 1, self.p)
        for row in self.kept:
            self.bloom.update(ngram_hashes(row, n).tolist())

    @property
    def counts(self) -> np.ndarray:
        size = max(len(h) for h in self.halves)
        return sum(np.pad(h, (0, size - len(h))) for h in self.halves)

    def summary(self) -> dict:
        digest, most = self.copies.most_common(1)[0] if self.copies else (None, 0)
        return {
            "rows": self.rows,
            "tokens": int(self.counts.sum()) + self.oov,
            "duplicates": self.duplicates,
            "distinct": len(self.seen),
            "repeated_contents": sum(1 for c in self.copies.values() if c > 1),
            "most_repeated": {"row": self.seen[digest], "copies": most} if most > 1 else None,
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


def _narrowest(row: np.ndarray):
    """The smallest integer type that holds every id of ``row`` (kept rows cost 1-2 bytes a token)."""
    if not row.size or row.min() < 0:
        return np.int64
    top = int(row.max())
    return np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int64


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
            self._keep({"eval_row": i, "train_row": j, "kind": "exact", "seen": 1.0, "closest_shared": 1.0}, row)
            return
        seen, grams = seen_fraction(row, self.train.ngram, self.train.bloom)
        if seen >= self.p.near_duplicate:
            self.near += 1
            example = self._keep({"eval_row": i, "train_row": None, "kind": "near", "seen": seen}, row)
            if example is not None:
                self._pending.append((example, set(grams)))

    def _keep(self, example: dict, row: np.ndarray) -> dict | None:
        if len(self.examples) >= self.p.show:
            return None
        example["tokens"] = [int(x) for x in row[:_SHOW_TOKENS]]
        self.examples.append(example)
        return example

    def summary(self) -> dict:
        """Counts and the first examples, near duplicates with the training row sharing most n-grams."""
        best = [(-1, 0)] * len(self._pending)  # (train row, shared n-grams)
        for j, row in zip(self.train.kept_at, self.train.kept) if self._pending else ():
            grams = set(ngram_hashes(row, self.train.ngram).tolist())
            for k, (_, wanted) in enumerate(self._pending):
                shared = len(grams & wanted)
                if shared > best[k][1]:
                    best[k] = (j, shared)
        for (example, wanted), (j, shared) in zip(self._pending, best):
            example["train_row"] = j
            example["closest_shared"] = shared / len(wanted)
        return {"overlap_exact": self.exact, "overlap_near": self.near, "overlap_examples": self.examples}


def scan(ctx, split: str, stats: SplitStats, p) -> None:
    """Feed up to ``max_sequences`` rows of ``split`` to ``stats``."""
    for i, row in iter_rows(ctx, split, p.max_sequences):
        stats.add(i, row)
