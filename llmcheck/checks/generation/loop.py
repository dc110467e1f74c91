"""Token-by-token generation with a plain loop over the model's forward, for the generation check.

No KV cache: each step runs the whole sequence again and takes the last position's logits, so
what is judged is the model itself (the kv-cache check compares the cache with this). Worker side.
"""

from __future__ import annotations

import torch

from llmcheck.measuring import budget
from llmcheck.results import Skip
from llmcheck.target.batches import batches, declared, hook_name
from llmcheck.target.model import ContractError, seed_everything
from llmcheck.target.tensors import max_abs_diff


def prompts(t, n: int, length: int, max_batches: int = 64) -> torch.Tensor:
    """``n`` prompts of ``length`` tokens: rows of eval data, else train data, else the default
    inputs (rows are reused when the data holds fewer than ``n``)."""
    split = next((s for s in ("eval", "train") if declared(t, s)), None)
    source = batches(t, split, limit=max_batches) if split else [t.batch(batch_size=n, seq_len=length)]
    what = hook_name(t, split) if split else "the default inputs"
    rows: list[torch.Tensor] = []
    for batch in source:
        tokens = t.tokens(batch)
        if tokens is None or tokens.dim() != 2:
            raise ContractError(
                f"generation needs prompts of token ids [batch, seq] from {what}: {t.no_tokens(batch, 'prompt with')}"
            )
        rows += [r[:length] for r in tokens if len(r) >= length]
        if len(rows) >= n:
            break
    if not rows:
        raise ContractError(f"no row of {what} has {length} tokens; lower generation.prompt_len")
    return torch.stack([rows[i % len(rows)] for i in range(n)]).to(t.device)


def as_batch(t, ids: torch.Tensor):
    """The model's input for token ids, under forward's first parameter (`Target.ids_batch`)."""
    return t.ids_batch(ids)


def _next_token(logits: torch.Tensor, p, generator) -> torch.Tensor:
    if generator is None:
        return logits.argmax(-1, keepdim=True)
    scaled = logits / p.temperature
    if p.top_k:
        kth = scaled.topk(min(p.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(scaled.softmax(-1), 1, generator=generator)


def generate(t, model, ids: torch.Tensor, new: int, p, seed: int | None = None) -> dict:
    """Greedy (``seed`` None) or seeded sampled generation; stops at the first non-finite logits."""
    generator = None
    if seed is not None:
        seed_everything(seed)
        generator = torch.Generator(device=ids.device).manual_seed(seed)
    steps, nonfinite = [], None
    with torch.no_grad():
        for step in range(new):
            logits = t.logits(t.forward(model, as_batch(t, ids)))
            if logits.dim() != 3:
                raise ContractError(f"generation needs logits of shape [batch, seq, vocab]; got {list(logits.shape)}")
            last = logits[:, -1].float()
            bad = ~torch.isfinite(last)
            if bad.any():
                row = int(bad.any(-1).nonzero()[0])
                nonfinite = {"step": step, "row": row, "count": int(bad[row].sum()), "length": ids.shape[1]}
                break
            steps.append(last)
            ids = torch.cat([ids, _next_token(last, p, generator)], dim=1)
    return {"ids": ids, "logits": torch.stack(steps, 1) if steps else None, "nonfinite": nonfinite}


def _summary(run: dict, prompt_len: int, p) -> dict:
    new = run["ids"][:, prompt_len:].tolist()
    eos = p.eos_token_id
    eos_at = [row.index(eos) if eos >= 0 and eos in row else None for row in new]
    cut = [row[:e] if e is not None else row for row, e in zip(new, eos_at)]
    return {
        "tokens": new,
        "eos_at": eos_at,
        "nonfinite": run["nonfinite"],
        "repeats": [longest_repeat(row, p.ngram) for row in cut],
    }


def _seed_mismatch(a: torch.Tensor, b: torch.Tensor, prompt_len: int) -> dict | None:
    n = min(a.shape[1], b.shape[1])
    diff = (a[:, :n] != b[:, :n]).nonzero()
    if len(diff):
        row, col = (int(x) for x in diff[0])
        return {"row": row, "step": col - prompt_len, "first": int(a[row, col]), "second": int(b[row, col])}
    if a.shape != b.shape:
        return {
            "row": 0,
            "step": n - prompt_len,
            "first": f"{a.shape[1] - prompt_len} tokens",
            "second": f"{b.shape[1] - prompt_len} tokens",
        }
    return None


def _batched_vs_single(t, model, ids, new, p, batched: dict) -> dict:
    """Largest |Δ logits| between batched and one-prompt greedy runs over their common prefix."""
    worst = {"max_abs_diff": 0.0, "row": 0, "step": 0, "token_mismatch": False}
    for i in range(ids.shape[0]):
        single = generate(t, model, ids[i : i + 1], new, p)
        a, b = batched["ids"][i, ids.shape[1] :], single["ids"][0, ids.shape[1] :]
        n = min(len(a), len(b))
        differ = (a[:n] != b[:n]).nonzero()
        upto = int(differ[0]) + 1 if len(differ) else n  # logits agree in context up to the first divergence
        worst["token_mismatch"] |= bool(len(differ)) or len(a) != len(b)
        if batched["logits"] is None or single["logits"] is None:
            continue
        for step in range(min(upto, batched["logits"].shape[1], single["logits"].shape[1])):
            d = max_abs_diff(batched["logits"][i, step], single["logits"][0, step])
            if d > worst["max_abs_diff"]:
                worst.update(max_abs_diff=d, row=i, step=step)
    return worst


def plan_tokens(ctx, p, prompt_len: int, new: int) -> budget.Plan:
    """New tokens per prompt that fit ``budget_s``. Each new token costs a forward of the whole
    sequence (no cache) in three batched runs (greedy, sampled twice) and one per prompt alone; the
    floor sees a loop longer than ``max_repeats`` and, when the end token is judged, its limit."""
    costs = budget.step_costs(ctx.target, train=False)
    length = prompt_len + new / 2  # the mean sequence length over the run
    batched = budget.forward_at(costs, p.prompts * length)
    single = budget.forward_at(costs, length)
    unit = None if batched is None else 3 * batched + p.prompts * single
    floor = p.max_repeats + 1 if p.eos_token_id < 0 else (p.eos_within or new)
    return budget.plan(ctx, "new tokens per prompt", unit, floor, new, budget.allowed(p), check="generation")


def run_generation(ctx, p) -> dict:
    t = ctx.target
    room = (t.traits.max_seq_len or p.prompt_len + p.max_new_tokens) - 1
    prompt_len = max(1, min(p.prompt_len, room))
    new = max(1, min(p.max_new_tokens, room + 1 - prompt_len))
    planned = plan_tokens(ctx, p, prompt_len, new)
    if not planned.fits:
        raise Skip(planned.inconclusive())
    new = planned.amount
    model = t.build().eval()
    ids = prompts(t, p.prompts, prompt_len)
    ctx.progress(run="greedy")
    greedy = generate(t, model, ids, new, p)
    ctx.progress(run="sampled")
    sampled = generate(t, model, ids, new, p, seed=t.seed + 21)
    again = generate(t, model, ids, new, p, seed=t.seed + 21)
    ctx.progress(run="one by one")
    config = getattr(model, "config", None)
    return {
        "prompts": p.prompts,
        "prompt_len": prompt_len,
        "max_new_tokens": new,
        "prompt_tokens": ids.tolist(),
        "config_eos": getattr(config, "eos_token_id", None),
        "greedy": _summary(greedy, prompt_len, p),
        "sampled": _summary(sampled, prompt_len, p),
        "seed_mismatch": _seed_mismatch(sampled["ids"], again["ids"], prompt_len),
        "batched": _batched_vs_single(t, model, ids, new, p, greedy),
        "plan": planned.to_json(),
    }


def longest_repeat(tokens: list[int], max_n: int) -> dict:
    """The n-gram (n <= max_n) repeated most times in a row: {repeats, n, start, gram}."""
    best = {"repeats": 1 if tokens else 0, "n": 1, "start": 0, "gram": tokens[:1]}
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            gram, k = tokens[start : start + n], 1
            while tokens[start + k * n : start + (k + 1) * n] == gram:
                k += 1
            if k > best["repeats"]:
                best = {"repeats": k, "n": n, "start": start, "gram": gram}
    return best
