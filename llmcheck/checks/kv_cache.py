"""kv-cache: decoding with a key/value cache gives what a full forward gives.

For causal models whose forward takes a cache (``past_key_values``, the transformers convention,
or ``cache`` in transformers 5.x) and returns it (``.past_key_values``, ``.cache``, the same key
of a mapping, or the second element of a tuple). Three probes: decoding token by token from
position 0, a prefill of half the sequence followed by single tokens, and greedy generation with
and without the cache. Every position's logits must match the full forward within a dtype-aware
tolerance and the generated tokens must be equal. Catches positions that restart at 0 on cached
steps, caches that drop or duplicate entries, and masks that ignore the cached length. The message
names the first position (or generated step) that differs and the size of the difference.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.target.equality import nan_problem


class Decoder:
    """Forward calls with and without a cache, in the model's own convention."""

    def __init__(self, t, model, keyword: str):
        self.t, self.model, self.keyword = t, model, keyword

    def __call__(self, ids, past=None, use_cache: bool = True, total: int | None = None):
        """(logits, cache) for ``ids`` following ``past``; ``total`` is the length with the cache."""
        import torch

        from llmcheck.target.decoding import cache_of

        t, extra = self.t, {}
        mask = torch.ones(ids.shape[0], total or ids.shape[1], dtype=torch.long, device=ids.device)
        if t.takes("use_cache"):
            extra["use_cache"] = use_cache
        if past is not None:
            extra[self.keyword] = past
        output = t.forward(self.model, t.ids_batch(ids, mask), **extra)
        return t.logits(output), (cache_of(output, self.keyword) if use_cache else None)

    def incremental(self, ids, prefill: int) -> list[float] | str:
        """Logits of a prefill of ``prefill`` tokens, then one token at a time, stacked by position."""
        import torch

        logits, past = self(ids[:, :prefill], total=prefill)
        steps = [logits]
        for pos in range(prefill, ids.shape[1]):
            if past is None:
                from llmcheck.target.decoding import SEARCHED

                src = self.t.takes_from(self.keyword)
                via = "" if src == "forward" else f"; it takes {self.keyword} through **kwargs, as {src}"
                return f"forward(use_cache=True) returned no cache (looked for {SEARCHED}{via})"
            logits, past = self(ids[:, pos : pos + 1], past, total=pos + 1)
            steps.append(logits)
        return torch.cat(steps, dim=1)

    def greedy(self, prompt, new: int, use_cache: bool) -> tuple[list[list[int]], list]:
        """Greedy tokens (per sample) and the logits each was chosen from."""
        import torch

        seq, chosen_from = prompt, []
        logits, past = self(prompt, use_cache=use_cache)
        for step in range(new):
            last = logits[:, -1].float()
            chosen_from.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
            if step + 1 < new:
                if use_cache:
                    logits, past = self(seq[:, -1:], past, total=seq.shape[1])
                else:
                    logits, _ = self(seq, use_cache=False)
        return seq[:, prompt.shape[1] :].tolist(), chosen_from


def _per_position(a, b) -> list[float]:
    from llmcheck.target.tensors import abs_diff  # NaN is never equal; equal infinities are

    return abs_diff(a, b).flatten(2).amax(dim=(0, 2)).tolist()


def _generation(decode, ids, p, max_len) -> dict:
    prompt_len = max(1, ids.shape[1] // 2)
    new = min(p.new_tokens, (max_len or 10**9) - prompt_len)
    if new < 1:
        return {"generation": "skipped: no room after the prompt within max_seq_len"}
    prompt = ids[:, :prompt_len]
    plain, plain_logits = decode.greedy(prompt, new, use_cache=False)
    cached, _ = decode.greedy(prompt, new, use_cache=True)
    out = {"prompt_len": prompt_len, "without_cache": plain, "with_cache": cached}
    for step in range(new):
        differ = [i for i in range(len(plain)) if plain[i][step] != cached[i][step]]
        if differ:
            top2 = plain_logits[step][differ[0]].topk(2).values
            out.update(first_diff_step=step, sample=differ[0], margin=float(top2[0] - top2[1]))
            break
    return out


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.tensors import model_dtype, nan_report, tolerance

    t = ctx.target
    model = t.build().eval()
    keyword = t.cache_keyword()
    if keyword is None:
        raise Skip(f"the forward of {t.name} takes no past_key_values (or cache) keyword: no KV cache to check")
    batch = t.batch()
    ids = t.tokens(batch)
    if ids is None or ids.dim() != 2:
        raise Skip(t.no_tokens(batch, "decode"))
    if ids.shape[1] < 2:
        raise Skip(f"sequence length {ids.shape[1]} leaves no token to decode after a prefill")
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # cached vs full compares eval forwards: they must be finite and repeat
    require_deterministic(t)
    decode = Decoder(t, model, keyword)
    out = {"keyword": keyword, "seq_len": int(ids.shape[1]), "probes": {}}
    with torch.no_grad():
        full, _ = decode(ids, use_cache=False)
        out["tolerance"] = tolerance(model_dtype(model), full, p.tolerance_scale)
        for name, prefill in (("token by token", 1), ("prefill then tokens", max(1, ids.shape[1] // 2))):
            ctx.progress(probe=name)
            got = decode.incremental(ids, prefill)
            out["probes"][name] = (
                got
                if isinstance(got, str)
                else {"prefill": prefill, "diff": _per_position(got, full), "nan": nan_report(full, got)}
            )
        ctx.progress(probe="greedy generation")
        out.update(_generation(decode, ids, p, t.traits.max_seq_len))
    return out


def judge(m: dict, p) -> Verdict:
    problems, tol = [], m["tolerance"]
    for name, r in m["probes"].items():
        if isinstance(r, str):
            return Verdict("failed", f"{name}: {r}")
        bad = [(s, d) for s, d in enumerate(r["diff"]) if d > tol]
        if r.get("nan"):
            sides = ("the full forward", "the cached decoding")
            problems.append(f"{name} (prefill {r['prefill']}): {nan_problem(r['nan'], 'the logits', sides)}")
        elif bad:
            s, d = bad[0]
            problems.append(
                f"{name} (prefill {r['prefill']}): logits at position {s} differ from the full forward "
                f"(max |Δ| = {d:.3g} > tolerance {tol:.3g}; {len(bad)} of {len(r['diff'])} positions differ)"
            )
    notes = []
    if "first_diff_step" in m:
        step, i = m["first_diff_step"], m["sample"]
        text = (
            f"greedy generation: generated token {step} of sample {i} is {m['with_cache'][i][step]} with the cache, "
            f"{m['without_cache'][i][step]} without (top-2 logit margin {m['margin']:.3g})"
        )
        (notes if m["margin"] <= 2 * tol else problems).append(
            text + (" [a near tie, not judged]" if m["margin"] <= 2 * tol else "")
        )
    if problems:
        return Verdict("failed", "KV cache: " + "; ".join(problems))
    gen = (
        f"greedy generation of {len(m['with_cache'][0])} tokens equal with and without the cache"
        if "with_cache" in m
        else f"generation {m.get('generation', 'not run')}"
    )
    worst = max((d for r in m["probes"].values() for d in r["diff"]), default=0.0)
    return Verdict(
        "passed",
        f"decoding with {m['keyword']} equals the full forward at all {m['seq_len']} positions "
        f"(max |Δ| = {worst:.3g} <= tolerance {tol:.3g}); " + "; ".join([gen, *notes]),
    )


CHECK = Check(
    name="kv-cache",
    family="kv-cache",
    summary=(
        "incremental decoding with past_key_values equals a full forward; "
        "greedy generation equal with and without cache"
    ),
    measure=measure,
    judge=judge,
    params={
        "new_tokens": Param(int, 8, "tokens to generate greedily with and without the cache", minimum=1),
        "tolerance_scale": Param(
            float,
            1.0,
            "multiplies the dtype's tolerance (fp32 1e-5, fp16 4e-3, bf16 3e-2, times max(1, max |logits|))",
            minimum=0,
        ),
    },
    needs=frozenset({"causal"}),
)
