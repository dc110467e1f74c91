"""data: the train and eval splits do not overlap, neither is full of duplicates, they share a
length and token distribution, and every token id is inside the vocabulary.

Reads up to ``max_sequences`` sequences (rows of token ids, padding removed by the attention
mask) from @llmcheck.train_data and @llmcheck.eval_data, in one streaming pass each. An eval
sequence that equals a training sequence is an exact overlap; one whose hashed n-grams are mostly
found in training is a near duplicate. Training n-grams go into a Bloom filter (rbloom), so
memory stays bounded on large sets. Shifts are Jensen-Shannon divergences (bits, 0..1) between
the splits' length and token-frequency histograms. Catches an eval split copied from train.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

FRACTION = {"minimum": 0, "maximum": 1}


def judge(m: dict, p) -> Verdict:
    problems, notes = [], []
    for name in ("train", "eval"):
        s = m.get(name)
        if s is None:
            continue
        rate = s["duplicates"] / max(s["rows"], 1)
        text = (
            f"{name}: {s['duplicates']} of {s['rows']} sequences are exact duplicates "
            f"({rate:.1%}, limit {p.max_duplicate_rate:.1%})"
        )
        if s["first_duplicate"]:
            text += f", first: #{s['first_duplicate'][0]} = #{s['first_duplicate'][1]}"
        (problems if rate > p.max_duplicate_rate else notes).append(text)
        if s["oov"]:
            where = s["first_oov"]
            problems.append(
                f"{name}: {s['oov']} token id(s) outside the vocabulary [0, {m['vocab_size']}); first: "
                f"id {where['id']} in sequence #{where['row']} at position {where['position']}"
            )
    if m.get("eval") is None:
        notes.append("no @llmcheck.eval_data: overlap and distribution shift not judged")
        return _verdict(problems, notes)
    _overlap(m, p, problems, notes)
    for kind, limit in (("length", p.max_length_shift), ("token", p.max_token_shift)):
        jsd = m[f"{kind}_jsd"]
        text = f"{kind} distribution shift train -> eval: JSD {jsd:.4f} bits (limit {limit:g}"
        text += f"; train halves: {m['token_jsd_train_halves']:.4f})" if kind == "token" else ")"
        (problems if jsd > limit else notes).append(text)
    return _verdict(problems, notes)


def _overlap(m: dict, p, problems: list, notes: list) -> None:
    n_eval, exact, near = m["eval"]["rows"], m["overlap_exact"], m["overlap_near"]
    rate = (exact + near) / max(n_eval, 1)
    text = (
        f"{exact + near} of {n_eval} eval sequences ({rate:.1%}, limit {p.max_overlap:.1%}) duplicate training data "
        f"({exact} exact, {near} near: >= {p.near_duplicate:.0%} of their {p.ngram}-grams seen in train)"
    )
    if rate > p.max_overlap:
        shown = "; ".join(_example(e, p) for e in m["overlap_examples"])
        problems.append(f"eval split overlaps train: {text}; first: {shown}")
    else:
        notes.append(text)


def _example(e: dict, p) -> str:
    if e["kind"] == "exact":
        return f"eval #{e['eval_row']} = train #{e['train_row']} (exact) tokens {e['tokens']}"
    return (
        f"eval #{e['eval_row']} ~ train #{e['train_row']} ({e['seen']:.0%} of its {p.ngram}-grams seen in train, "
        f"{e['closest_shared']:.0%} in train #{e['train_row']}, the closest) tokens {e['tokens']}"
    )


def _verdict(problems: list, notes: list) -> Verdict:
    if problems:
        return Verdict("failed", "; ".join(problems))
    return Verdict("passed", "; ".join(notes))


def measure(ctx, p) -> dict:
    from llmcheck.checks.data.dedup import Overlap, SplitStats, scan
    from llmcheck.target.batches import declared

    t = ctx.target
    if not declared(t, "train"):
        raise Skip(
            "no @llmcheck.train_data in the model file: declare one (an iterable of training batches) "
            "to check it against @llmcheck.eval_data"
        )
    vocab = t.traits.vocab_size
    train = SplitStats(vocab, p, keep_ngrams=True)
    scan(ctx, "train", train, p)
    out = {"vocab_size": vocab, "ngram": p.ngram, "train": train.summary()}
    if not declared(t, "eval"):
        return out
    evals = SplitStats(vocab, p, overlap=Overlap(train, p))
    scan(ctx, "eval", evals, p)
    out.update(evals.overlap.summary(ctx, p), eval=evals.summary())
    out.update(
        length_jsd=train.length_jsd(evals),
        token_jsd=train.token_jsd(evals),
        token_jsd_train_halves=train.halves_jsd(),
        bloom=train.bloom_info(),
    )
    return out


CHECK = Check(
    name="data",
    family="data",
    summary="train and eval do not overlap; duplicates, length and token shift, out-of-vocabulary ids",
    measure=measure,
    judge=judge,
    params={
        "max_sequences": Param(int, 10000, "sequences read from each split", minimum=1),
        "ngram": Param(int, 13, "n-gram length, in tokens, for near-duplicate detection", minimum=1),
        "near_duplicate": Param(
            float,
            0.5,
            "fraction of an eval sequence's n-grams seen in train that makes it a near duplicate",
            **FRACTION,
        ),
        "max_overlap": Param(float, 0.0, "fraction of eval sequences allowed to duplicate training data", **FRACTION),
        "max_duplicate_rate": Param(
            float, 0.01, "fraction of exact duplicate sequences allowed within a split", **FRACTION
        ),
        "max_length_shift": Param(
            float, 0.1, "largest Jensen-Shannon divergence (bits) of the length histograms", **FRACTION
        ),
        "max_token_shift": Param(
            float, 0.05, "largest Jensen-Shannon divergence (bits) of the token frequencies", **FRACTION
        ),
        "bloom_error_rate": Param(
            float, 1e-3, "false-positive rate of the Bloom filter of training n-grams", minimum=1e-9, maximum=0.5
        ),
        "show": Param(int, 3, "overlapping examples reported", minimum=0),
    },
)
