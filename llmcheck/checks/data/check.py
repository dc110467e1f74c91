"""data: the train and eval splits do not overlap, neither is full of duplicates, they share a
length and token distribution, and every token id is inside the vocabulary.

Reads up to ``max_sequences`` sequences (rows of token ids, padding removed by the attention
mask) from @llmcheck.train_data and @llmcheck.eval_data, in one streaming pass each. Each is judged
against what random sampling predicts (llmcheck.checks.data.sampling): exact repeats within a split
against the collisions of random windows drawn with replacement, when the rows are such windows;
eval sequences that equal a training sequence, or whose n-grams are mostly found in training,
against the rate at which one half of train finds them in the other. Shifts are Jensen-Shannon
divergences (bits, 0..1) between the splits' length and token-frequency histograms. Catches an
eval split copied from train.
"""

from __future__ import annotations

from llmcheck.checks.data.sampling import MIN_SHIFTED, overlap_by_chance, repeats_by_chance
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

FRACTION = {"minimum": 0, "maximum": 1}


def judge(m: dict, p) -> Verdict:
    problems, notes = [], []
    for name in ("train", "eval"):
        s = m.get(name)
        if s is None:
            continue
        bad, text = _duplicates(name, s, p)
        (problems if bad else notes).append(text)
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


def _duplicates(name: str, s: dict, p) -> tuple[bool, str]:
    """Exact repeats within a split, judged against sampling with replacement where the rows are
    random windows, else against ``max_duplicate_rate`` alone."""
    count, rows, limit = s["duplicates"], max(s["rows"], 1), p.max_duplicate_rate
    chance, w = repeats_by_chance(s, p.alpha), s.get("windows") or {}
    text = f"{name}: {count} of {s['rows']} sequences are exact duplicates ({count / rows:.1%}"
    text += f", limit {limit:.1%})" if chance is None else ")"
    if s["first_duplicate"]:
        most = s["most_repeated"]
        text += f", first: #{s['first_duplicate'][0]} = #{s['first_duplicate'][1]}"
        text += f", {s['repeated_contents']} distinct contents repeated, most: #{most['row']} x{most['copies']}"
    if chance is None:
        return count / rows > limit, f"{text} (rule: rate limit, not random windows: {_not_windows(w)})"
    excess = max(0.0, count - chance["expected"])
    text += (
        f" (rule: random {w['length']}-token windows drawn with replacement: {w['shifted']} shifted overlaps of "
        f">= {w['min_overlap']} tokens among {w['distinct']} distinct rows put the population at "
        f"~{chance['population']:,.0f} windows, so {s['rows']} draws repeat {chance['expected']:.1f} by chance, "
        f"bound {chance['bound']} at p = {p.alpha:g}, beyond chance: {excess:.1f} ({excess / rows:.1%}, "
        f"limit {limit:.1%}))"
    )
    return count > chance["bound"] and excess / rows > limit, text


def _not_windows(w: dict) -> str:
    if w.get("reason"):
        return w["reason"]
    if w.get("shifted"):
        pairs = f"only {w['shifted']} pairs of its {w['distinct']} distinct rows"
        return f"{pairs} overlap as shifted windows (< {MIN_SHIFTED})"
    return f"no two of its {w.get('distinct', 0)} distinct rows overlap as shifted windows"


def _overlap(m: dict, p, problems: list, notes: list) -> None:
    n_eval, exact, near, base = m["eval"]["rows"], m["overlap_exact"], m["overlap_near"], m["baseline"]
    rate, chance = (exact + near) / max(n_eval, 1), overlap_by_chance(base, n_eval, p.alpha)
    excess = rate - chance["rate"]
    left_out = f"{base['left_out']} sharing text with them as shifted windows left out"
    left_out = left_out if base["windows_known"] else "rows not read as windows: none left out"
    text = (
        f"{exact + near} of {n_eval} eval sequences ({rate:.1%}) duplicate training data ({exact} exact, {near} "
        f"near: >= {p.near_duplicate:.0%} of their {m['ngram']}-grams seen in train); train against itself: "
        f"{base['hits']} of {base['rows']} odd rows near duplicates of the even ones ({left_out}), "
        f"{chance['rate']:.1%} scaled to all of train, up to {chance['bound']} by chance at p = {p.alpha:g}; "
        f"beyond chance: {excess:.1%} (limit {p.max_overlap:.1%})"
    )
    if exact + near > chance["bound"] and excess > p.max_overlap:
        shown = "; ".join(_example(e, m["ngram"]) for e in m["overlap_examples"])
        problems.append(f"eval split overlaps train: {text}; first: {shown}")
    else:
        notes.append(text)


def _example(e: dict, n: int) -> str:
    if e["kind"] == "exact":
        return f"eval #{e['eval_row']} = train #{e['train_row']} (exact) tokens {e['tokens']}"
    return (
        f"eval #{e['eval_row']} ~ train #{e['train_row']} ({e['seen']:.0%} of its {n}-grams seen in train, "
        f"{e['closest_shared']:.0%} in train #{e['train_row']}, the closest) tokens {e['tokens']}"
    )


def _verdict(problems: list, notes: list) -> Verdict:
    if problems:
        return Verdict("failed", "; ".join(problems))
    return Verdict("passed", "; ".join(notes))


def measure(ctx, p) -> dict:
    from llmcheck.checks.data.dedup import Overlap, SplitStats, scan
    from llmcheck.checks.data.ngrams import resolve_ngram
    from llmcheck.checks.data.windows import baseline, window_stats
    from llmcheck.target.batches import declared

    t = ctx.target
    if not declared(t, "train"):
        raise Skip(
            "no @llmcheck.train_data in the model file: declare one (an iterable of training batches) "
            "to check it against @llmcheck.eval_data"
        )
    vocab = t.traits.vocab_size
    train = SplitStats(vocab, p)
    scan(ctx, "train", train, p)
    n = resolve_ngram(p.ngram, vocab or len(train.counts), train.lengths)
    train.index_ngrams(n)
    windows, pairs = window_stats(train, n)
    out = {"vocab_size": vocab, "ngram": n, "train": {**train.summary(), "windows": windows}}
    if not declared(t, "eval"):
        return out
    evals = SplitStats(vocab, p, overlap=Overlap(train, p))
    scan(ctx, "eval", evals, p)
    out.update(evals.overlap.summary(), eval={**evals.summary(), "windows": window_stats(evals, n)[0]})
    out.update(
        baseline=baseline(train, n, pairs, p.near_duplicate),
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
        "ngram": Param(
            int,
            0,
            "n-gram length, in tokens, for near duplicates; 0: 50 for a vocabulary of at most 256 ids "
            "(characters), else 13 (subwords), at most half the median row length",
            minimum=0,
        ),
        "near_duplicate": Param(
            float,
            0.5,
            "fraction of an eval sequence's n-grams seen in train that makes it a near duplicate",
            **FRACTION,
        ),
        "max_overlap": Param(
            float, 0.0, "fraction of eval sequences that may duplicate training data beyond chance", **FRACTION
        ),
        "max_duplicate_rate": Param(
            float, 0.01, "fraction of a split's sequences that may repeat an earlier one beyond chance", **FRACTION
        ),
        "alpha": Param(
            float,
            1e-4,
            "probability that random sampling alone exceeds a duplicate or overlap bound (a false alarm)",
            minimum=1e-12,
            maximum=0.5,
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
