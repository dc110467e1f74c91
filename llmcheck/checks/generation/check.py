"""generation: greedy and sampled generation from a few prompts gives finite logits at every
step, does not loop, reaches the end token where one is set, repeats exactly under the same seed,
and gives the same tokens batched as one prompt at a time.

A plain loop over the model's forward (the whole sequence recomputed at every step, no KV cache,
so the model is judged and not a cache). Prompts are the first ``prompt_len`` tokens of rows from
@llmcheck.eval_data, @llmcheck.train_data or the default inputs. Loops and the end token are
judged on sampled text by default: greedy decoding of small or untrained models loops by nature
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"), while a model that loops
when sampled at temperature 1 has collapsed onto a few tokens. Catches a model stuck on one token,
non-finite logits on longer sequences, state carried from one call to the next, and outputs that
depend on the other prompts in the batch.
"""

from __future__ import annotations

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Verdict


def _loops(m: dict, p) -> list[str]:
    out = []
    for run in ("greedy", "sampled"):
        if p.judge_on not in (run, "both"):
            continue
        for i, r in enumerate(m[run]["repeats"]):
            if r["repeats"] > p.max_repeats:
                what = f"token {r['gram'][0]}" if r["n"] == 1 else f"{r['n']}-gram {r['gram']}"
                out.append(
                    f"degenerate loop in {run} generation for prompt {i}: {what} repeated {r['repeats']} times "
                    f"in a row from new token {r['start']} (limit {p.max_repeats})"
                )
    return out


def _end_token(m: dict, p) -> list[str]:
    if p.eos_token_id < 0:
        return []
    limit = p.eos_within or m["max_new_tokens"]
    out = []
    for run in ("greedy", "sampled"):
        if p.judge_on in (run, "both"):
            for i, pos in enumerate(m[run]["eos_at"]):
                if pos is None or pos >= limit:
                    got = "never" if pos is None else f"only at new token {pos}"
                    out.append(
                        f"{run} generation for prompt {i} produced the end token {p.eos_token_id} {got} "
                        f"(limit {limit} of {m['max_new_tokens']} new tokens)"
                    )
    return out


def _consistency(m: dict, p) -> list[str]:
    out = []
    for run in ("greedy", "sampled"):
        bad = m[run]["nonfinite"]
        if bad:
            out.append(
                f"non-finite logits in {run} generation at new token {bad['step']} for prompt {bad['row']} "
                f"({bad['count']} values; sequence length {bad['length']})"
            )
    if m["seed_mismatch"]:
        s = m["seed_mismatch"]
        out.append(
            f"same seed, different output: prompt {s['row']} differs at new token {s['step']} "
            f"({s['first']} vs {s['second']}); state is carried from one call to the next"
        )
    b = m["batched"]
    if b["max_abs_diff"] > p.atol:
        out.append(
            f"batched generation differs from one prompt at a time: prompt {b['row']} at new token {b['step']}, "
            f"max |Δ logits| = {b['max_abs_diff']:.3g} > atol {p.atol:g}"
        )
    return out


def judge(m: dict, p) -> Verdict:
    problems = _consistency(m, p) + _loops(m, p) + _end_token(m, p)
    if problems:
        return Verdict("failed", "; ".join(problems))
    worst = {run: max((r["repeats"] for r in m[run]["repeats"]), default=0) for run in ("greedy", "sampled")}
    b = m["batched"]
    notes = [
        f"{m['prompts']} prompts x {m['max_new_tokens']} new tokens, greedy and sampled (T={p.temperature:g}): "
        f"logits finite; same seed gives the same tokens; batched = one by one (max |Δ logits| {b['max_abs_diff']:.2g}"
        f" <= {p.atol:g}{'; tokens differ only at a near-tie' if b['token_mismatch'] else ''})",
        f"longest run: {worst['sampled']}x sampled, {worst['greedy']}x greedy "
        f"(limit {p.max_repeats}, judged on {p.judge_on})",
    ]
    if m.get("plan", {}).get("cut"):
        notes.append(m["plan"]["sentence"])
    if p.eos_token_id >= 0:
        notes.append(f"end token {p.eos_token_id} reached within {p.eos_within or m['max_new_tokens']} new tokens")
    elif m.get("config_eos") is not None:
        notes.append(f"end token not judged: set generation.eos_token_id (the model's config says {m['config_eos']})")
    return Verdict("passed", "; ".join(notes))


def measure(ctx, p) -> dict:
    from llmcheck.checks.generation.loop import run_generation
    from llmcheck.target.preconditions import require_deterministic

    require_deterministic(ctx.target)  # batched vs one by one compares eval forwards (finite logits: judged here)
    return run_generation(ctx, p)


CHECK = Check(
    name="generation",
    family="generation",
    summary="no loops, end token reached, same seed same text, batched equals one by one, finite logits",
    measure=measure,
    judge=judge,
    needs=frozenset({"causal", "vocab_size"}),
    params={
        "prompts": Param(int, 3, "prompts generated from", minimum=1),
        "prompt_len": Param(int, 8, "tokens per prompt", minimum=1),
        "max_new_tokens": Param(int, 32, "tokens generated per prompt (capped by max_seq_len)", minimum=1),
        "temperature": Param(float, 1.0, "sampling temperature", minimum=1e-6),
        "top_k": Param(int, 0, "sample from the k most likely tokens only (0: all)", minimum=0),
        "ngram": Param(int, 3, "longest n-gram checked for repetition", minimum=1),
        "max_repeats": Param(int, 8, "times in a row an n-gram may repeat before it counts as a loop", minimum=1),
        "judge_on": Param(
            str,
            "sampled",
            "which generations loops and the end token are judged on",
            choices=("sampled", "greedy", "both"),
        ),
        "eos_token_id": Param(int, -1, "the end token that generation must produce (-1: none, not judged)", minimum=-1),
        "eos_within": Param(int, 0, "new tokens within which the end token must appear (0: max_new_tokens)", minimum=0),
        "atol": Param(float, 1e-4, "largest |Δ logits| between batched and one-by-one generation", minimum=0),
        "budget_s": budget.param(30.0, "generation runs (new tokens are cut to fit, never below the loop limit)"),
    },
)
