"""static-cache: greedy decoding from a static (pre-allocated) cache equals the dynamic cache.

For Hugging Face models whose ``generate`` takes ``cache_implementation="static"``: greedy decoding
of ``new_tokens`` tokens (32, fewer when max_seq_len leaves less room after the prompt) from a
plain prompt batch and from one whose first sample is left-padded, once with the default dynamic
cache and once with the static one. The tokens must be identical, and every step's logits equal
within assert_close's tolerance for the dtype (`llmcheck.target.closeness`) up to the first step
where the tokens differ. A differing token whose top-2 logit margin is within twice the tolerance
is a near tie: reported, not judged. Catches code that reads the cache's length from its tensors
(a static cache's tensors have the maximum length, not the filled one) and masks that do not
cover the unfilled slots.
"""

from __future__ import annotations

from typing import Any

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict


def _prompts(t, p, pad_id: int) -> dict[str, tuple[Any, Any]]:
    """(input_ids, attention_mask) per probe: the batch's first tokens, and the same with sample 0
    left-padded by a quarter of the prompt."""
    import torch

    ids = t.tokens(t.batch())[:, : p.prompt_tokens].clone()
    mask = torch.ones_like(ids)
    padded_ids, padded_mask = ids.clone(), mask.clone()
    pad = max(1, ids.shape[1] // 4)
    padded_ids[0, :pad], padded_mask[0, :pad] = pad_id, 0
    return {"plain": (ids, mask), "left-padded": (padded_ids, padded_mask)}


def _generate(model, ids, mask, new: int, cache: str | None, pad_id: int):
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,  # no early end token: both runs decode the same number of steps
            do_sample=False,
            num_beams=1,
            cache_implementation=cache,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad_id,
        )
    return out.sequences[:, ids.shape[1] :], [x.float() for x in out.logits]


def _compare(dynamic, static, dtype, p) -> dict:
    """First differing token (sample, step, top-2 margin) and the logits of the steps before it."""
    from llmcheck.target.closeness import allowed, difference

    (tok_d, log_d), (tok_s, log_s) = dynamic, static
    differ = (tok_d != tok_s).nonzero().tolist()
    first = min(differ, key=lambda x: (x[1], x[0])) if differ else None
    until = first[1] + 1 if first else len(log_d)  # the step whose token differs still had equal inputs
    worst = {"max_abs_diff": 0.0, "step": None, "tolerance": 0.0}
    for step in range(until):
        d, tol = difference(log_s[step], log_d[step]), allowed(dtype, log_d[step], p.tolerance_scale)
        if d["max_abs_diff"] / tol > worst["max_abs_diff"] / max(worst["tolerance"], 1e-30):
            worst = {"max_abs_diff": d["max_abs_diff"], "step": step, "sample": d["index"][0], "tolerance": tol}
    out = {"steps": len(log_d), "logits": worst, "dynamic_tokens": tok_d.tolist(), "static_tokens": tok_s.tolist()}
    if first:
        sample, step = first
        top2 = log_d[step][sample].topk(2).values
        out["first_diff"] = {"sample": sample, "step": step, "margin": float(top2[0] - top2[1])}
        out["first_diff"]["tolerance"] = allowed(dtype, log_d[step], p.tolerance_scale)
    return out


def measure(ctx, p) -> dict:
    from llmcheck.target.tensors import model_dtype

    t = ctx.target
    model = t.build().eval()
    if not callable(getattr(model, "generate", None)) or getattr(model, "generation_config", None) is None:
        raise Skip(f"{t.name} has no Hugging Face generate() with cache_implementation: no static cache to check")
    config = getattr(model, "config", None)
    pad_id = next(
        (
            i
            for i in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None))
            if isinstance(i, int)
        ),
        0,
    )
    prompts = _prompts(t, p, pad_id)
    prompt_len = prompts["plain"][0].shape[1]
    room = (t.traits.max_seq_len or prompt_len + p.new_tokens) - prompt_len
    new = min(p.new_tokens, room)
    if new < 1:
        raise Skip(f"no room to generate after a {prompt_len}-token prompt within max_seq_len {t.traits.max_seq_len}")
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # static vs dynamic compares greedy eval decoding: its forwards must be finite and repeat
    require_deterministic(t)
    out: dict[str, Any] = {"new_tokens": new, "prompt_tokens": prompt_len, "probes": {}}
    for name, (ids, mask) in prompts.items():
        ctx.progress(probe=name)
        dynamic = _generate(model, ids, mask, new, None, pad_id)
        try:
            static = _generate(model, ids, mask, new, "static", pad_id)
        except (ValueError, TypeError, NotImplementedError) as exc:  # transformers' "does not support" errors
            raise Skip(f"generate(cache_implementation='static') is not available for {t.name}: {exc}") from None
        out["probes"][name] = _compare(dynamic, static, model_dtype(model), p)
    return out


def judge(m: dict, p) -> Verdict:
    problems, notes = [], []
    for name, r in m["probes"].items():
        lg = r["logits"]
        if lg["max_abs_diff"] > lg["tolerance"]:
            same = "" if r.get("first_diff") else f" (the {r['steps']} generated tokens agree; the logits do not)"
            problems.append(
                f"{name} prompt: static-cache logits differ from the dynamic cache's at step {lg['step']} "
                f"(sample {lg['sample']}): max |Δ| = {lg['max_abs_diff']:.3g} > tolerance {lg['tolerance']:.3g}{same}"
            )
        f = r.get("first_diff")
        if f:
            s, k = f["sample"], f["step"]
            text = (
                f"{name} prompt: generated token {k} of sample {s} is {r['static_tokens'][s][k]} with the static "
                f"cache, {r['dynamic_tokens'][s][k]} with the dynamic cache (top-2 margin {f['margin']:.3g})"
            )
            (notes if f["margin"] <= 2 * f["tolerance"] else problems).append(
                text + (" [a near tie, not judged]" if f["margin"] <= 2 * f["tolerance"] else "")
            )
    if problems:
        return Verdict("failed", "; ".join(problems + notes))
    worst = max((r["logits"]["max_abs_diff"] for r in m["probes"].values()), default=0.0)
    tol = max((r["logits"]["tolerance"] for r in m["probes"].values()), default=0.0)
    return Verdict(
        "passed",
        f"greedy decoding of {m['new_tokens']} tokens after a {m['prompt_tokens']}-token prompt (plain and "
        f"left-padded) is identical with the static and the dynamic cache; logits max |Δ| = {worst:.3g} <= {tol:.3g}"
        + ("; " + "; ".join(notes) if notes else ""),
    )


CHECK = Check(
    name="static-cache",
    family="kv-cache",
    summary="greedy decoding with generate(cache_implementation='static') equals the dynamic cache",
    measure=measure,
    judge=judge,
    params={
        "new_tokens": Param(int, 32, "tokens to decode greedily (fewer when max_seq_len leaves less room)", minimum=1),
        "prompt_tokens": Param(int, 8, "prompt length taken from the run's batch", minimum=2),
        "tolerance_scale": Param(
            float, 1.0, "multiplies the dtype's tolerance (assert_close's atol + rtol * max |logits|)", minimum=0
        ),
    },
    needs=frozenset({"causal"}),
)
