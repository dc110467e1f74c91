"""causal: the logits at position t do not depend on the tokens after t.

Two probes at several positions t, both on the eval-mode model. Perturbation: every token after t
is replaced by a different one and the logits at positions <= t must stay within a dtype-aware
tolerance. Gradients: a random projection of the logits at t is backpropagated to the input
embeddings (captured with a forward hook on the embedding module) and every later position must
get exactly zero gradient. Catches a missing or off-by-one attention mask, a look-ahead in a
convolution or shift, and normalisation over the time axis. The message names the first leaking
position, the token it sees and the size of the change.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict


def _positions(seq_len: int, count: int) -> list[int]:
    """``count`` positions spread evenly over 0 .. seq_len - 2 (each needs a later token)."""
    last = seq_len - 2
    return sorted({round(i * last / max(count - 1, 1)) for i in range(count)})


def _perturbation(t, model, batch, ids, positions, gen, scale) -> dict:
    """For each t: max |Δ logits| at each position <= t when every token after t changes."""
    import torch

    from llmcheck.target.tensors import model_dtype, tolerance

    vocab = t.traits.vocab_size
    with torch.no_grad():
        base = t.logits(t.forward(model, batch))
        tol = tolerance(model_dtype(model), base, scale)
        per_t = {}
        for pos in positions:
            changed = ids.clone()
            shift = torch.randint(1, vocab, changed[:, pos + 1 :].shape, generator=gen).to(ids.device)
            changed[:, pos + 1 :] = (changed[:, pos + 1 :] + shift) % vocab
            out = t.logits(t.forward(model, t.with_tokens(batch, changed)))
            diff = (out[:, : pos + 1].float() - base[:, : pos + 1].float()).abs()
            per_t[str(pos)] = torch.nan_to_num(diff, nan=float("inf")).flatten(2).amax(dim=(0, 2)).tolist()
    return {"tolerance": tol, "logit_diff": per_t}


def _gradients(t, model, batch, ids, positions, gen) -> dict:
    """For each t: max |d(r · logits_t) / d embedding_s| at every position s."""
    import torch

    from llmcheck.target.tensors import OutputTap

    module = t.input_embedding(model)
    if module is None:
        return {"gradient_probe": "skipped: the model has no input embedding module (nn.Embedding)"}
    with OutputTap(module) as tap:
        logits = t.logits(t.forward(model, batch))
    leaf = tap.leaf(tuple(ids.shape))
    if leaf is None or not logits.requires_grad:
        return {
            "gradient_probe": f"skipped: {type(module).__name__} output does not reach the logits as [batch, seq, ...]"
        }
    per_t = {}
    for pos in positions:
        r = torch.randn(logits.shape[-1], generator=gen).to(logits.device)
        (grad,) = torch.autograd.grad((logits[:, pos].float() @ r).sum(), leaf, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        per_t[str(pos)] = grad.float().abs().flatten(2).amax(dim=(0, 2)).tolist()
    return {"gradient_probe": f"hook on {type(module).__name__}", "embedding_grad": per_t}


def measure(ctx, p) -> dict:
    import torch

    t = ctx.target
    model = t.build().eval()
    model.requires_grad_(False)  # only the tapped embedding output needs a gradient
    batch = t.batch(seq_len=p.seq_len or None)
    ids = t.tokens(batch)
    if ids is None or ids.dim() != 2:
        raise Skip(t.no_tokens(batch, "perturb"))
    if ids.shape[1] < 2:
        raise Skip(f"sequence length {ids.shape[1]} leaves no later token to perturb")
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # a leak is judged by comparing eval forwards: they must be finite and repeat
    require_deterministic(t)
    positions = _positions(ids.shape[1], p.positions)
    gen = torch.Generator().manual_seed(t.seed + 17)
    ctx.progress(probe="perturbation", positions=len(positions))
    out = {"seq_len": int(ids.shape[1]), "positions": positions}
    out.update(_perturbation(t, model, batch, ids, positions, gen, p.tolerance_scale))
    ctx.progress(probe="gradient")
    out.update(_gradients(t, model, batch, ids, positions, gen))
    return out


def _first_logit_leak(m: dict):
    """(t, position, |Δ|) of the smallest position whose logits change when tokens after t change."""
    leaks = [(s, int(t), d) for t, diffs in m["logit_diff"].items() for s, d in enumerate(diffs) if d > m["tolerance"]]
    if not leaks:
        return None
    s, t, d = min(leaks)
    return t, s, d


def _first_grad_leak(m: dict, rtol: float):
    """(t, later position, |grad|, allowed) of the smallest t whose logits get gradient from a later embedding."""
    for t, grads in sorted(m.get("embedding_grad", {}).items(), key=lambda kv: int(kv[0])):
        t = int(t)
        allowed = rtol * max(grads[: t + 1] or [0.0])
        later = [(s, g) for s, g in enumerate(grads) if s > t and g > allowed]
        if later:
            return t, later[0][0], later[0][1], allowed
    return None


def judge(m: dict, p) -> Verdict:
    problems = []
    leak = _first_logit_leak(m)
    if leak:
        t, s, d = leak
        problems.append(
            f"logits at position {s} change when the tokens after position {t} change "
            f"(max |Δ| = {d:.3g} > tolerance {m['tolerance']:.3g})"
        )
    grad = _first_grad_leak(m, p.grad_rtol)
    if grad:
        t, s, g, allowed = grad
        problems.append(
            f"gradient: the logits at position {t} depend on the embedding of token {s} "
            f"(|∂logits/∂emb| = {g:.3g} > {allowed:.3g})"
        )
    probes = "perturbation" + (" and gradient" if "embedding_grad" in m else f"; gradient {m['gradient_probe']}")
    if problems:
        return Verdict("failed", "causal leak: " + "; ".join(problems))
    worst = max((d for diffs in m["logit_diff"].values() for d in diffs), default=0.0)
    return Verdict(
        "passed",
        f"no position depends on later tokens at t = {m['positions']} of {m['seq_len']} "
        f"({probes}; max |Δ| = {worst:.3g} <= tolerance {m['tolerance']:.3g})",
    )


CHECK = Check(
    name="causal",
    family="causal",
    summary="logits at position t do not depend on tokens after t (perturbation and embedding gradients)",
    measure=measure,
    judge=judge,
    params={
        "positions": Param(int, 6, "how many positions t to probe, spread over the sequence", minimum=1),
        "seq_len": Param(int, 0, "sequence length to probe (0: the run's seq_len, capped at max_seq_len)", minimum=0),
        "tolerance_scale": Param(
            float,
            1.0,
            "multiplies the dtype's tolerance for logit changes "
            "(fp32 1e-5, fp16 4e-3, bf16 3e-2, times max(1, max |logits|))",
            minimum=0,
        ),
        "grad_rtol": Param(
            float,
            1e-6,
            "largest gradient on a later embedding, relative to the largest on an earlier one, still counted as zero",
            minimum=0,
        ),
    },
    needs=frozenset({"causal"}),
)
