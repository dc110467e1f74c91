"""padding: left and right padding with an attention mask leave the real tokens' outputs unchanged.

For models whose forward takes ``attention_mask``: the same batch is run unpadded, then with pad
tokens added on the right and on the left (mask 0 on the pads), and the outputs at the real
tokens must agree within a dtype-aware tolerance. Position ids follow transformers' generate()
for left padding (``mask.cumsum(-1) - 1``) and are passed when the forward takes
``position_ids``. Catches a mask that is accepted and ignored, a mask applied with the wrong
polarity or only on one side, and positions counted from the first pad token. The message names
the side, the sample and the position, and says whether the mask had any effect at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.target.equality import nan_problem


def _inputs(t, batch, ids, mask, side: str | None = None):
    """(batch, extra keyword arguments) for a forward with these ids and this mask; other
    per-token inputs (token_type_ids, ...) get zeros on the pads."""
    if isinstance(batch, Mapping) and side:
        key, old = t.token_entry(batch)
        n, seq = old.shape
        pad = ids.shape[1] - seq
        batch = {
            k: _pad(v, pad, side, 0) if k != key and v.dim() >= 2 and tuple(v.shape[:2]) == (n, seq) else v
            for k, v in batch.items()
        }
    return t.with_mask(batch, ids, mask)


def _pad(x, pad: int, side: str, value):
    import torch

    shape = (x.shape[0], pad, *x.shape[2:])
    filler = torch.full(shape, value, dtype=x.dtype, device=x.device)
    return torch.cat([x, filler] if side == "right" else [filler, x], dim=1)


def _pad_id(model, p) -> int:
    if p.pad_token_id >= 0:
        return p.pad_token_id
    found = getattr(getattr(model, "config", None), "pad_token_id", None)
    return found if isinstance(found, int) else 0


def _side(t, model, batch, ids, base, side: str, pad: int, pad_id: int, tol: float) -> dict:
    import torch

    from llmcheck.target.tensors import max_abs_diff, nan_report, worst_index

    n, seq = ids.shape
    padded_ids = _pad(ids, pad, side, pad_id)
    mask = _pad(torch.ones_like(ids), pad, side, 0)
    out = _run(t, model, _inputs(t, batch, padded_ids, mask, side))
    if out.dim() < 2 or out.shape[:2] != padded_ids.shape:
        raise Skip(f"the output has shape {list(out.shape)}, not one row per token [batch, seq, ...]")
    real = out[:, :seq] if side == "right" else out[:, pad:]
    found = {"max_abs_diff": max_abs_diff(real, base), "nan": nan_report(base, real)}
    if found["max_abs_diff"] > tol:
        sample, position = worst_index(real, base)[:2]
        unmasked = _run(t, model, _inputs(t, batch, padded_ids, torch.ones_like(mask), side))
        found.update(
            sample=sample, position=position, token=int(ids[sample, position]), mask_effect=max_abs_diff(out, unmasked)
        )
    return found


def _run(t, model, inputs):
    batch, extra = inputs
    return t.logits(t.forward(model, batch, **extra))


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.tensors import model_dtype, tolerance

    t = ctx.target
    model = t.build().eval()
    if not t.takes("attention_mask"):
        raise Skip(f"the forward of {t.name} takes no attention_mask, so padding cannot be masked")
    batch = t.batch()
    ids = t.tokens(batch)
    if ids is None or ids.dim() != 2:
        raise Skip(t.no_tokens(batch, "pad"))
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # padded vs unpadded compares eval forwards: they must be finite and repeat
    require_deterministic(t)
    pad_id = _pad_id(model, p)
    out = {
        "pad_tokens": p.pad_tokens,
        "pad_token_id": pad_id,
        "takes_position_ids": t.takes("position_ids"),
        "mask_from": t.takes_from("attention_mask"),
        "sides": {},
    }
    with torch.no_grad():
        base = _run(t, model, _inputs(t, batch, ids, torch.ones_like(ids)))
        out["tolerance"] = tol = tolerance(model_dtype(model), base, p.tolerance_scale)
        for side in p.sides:
            ctx.progress(side=side)
            out["sides"][side] = _side(t, model, batch, ids, base, side, p.pad_tokens, pad_id, tol)
    return out


def judge(m: dict, p) -> Verdict:
    problems = []
    for side, r in m["sides"].items():
        if r["max_abs_diff"] <= m["tolerance"]:
            continue
        if r.get("nan"):
            sides = ("the unpadded batch", f"the {side}-padded batch")
            problems.append(f"{side} padding: {nan_problem(r['nan'], 'the outputs of the real tokens', sides)}")
            continue
        text = (
            f"{side} padding ({m['pad_tokens']} pad tokens, id {m['pad_token_id']}): the output of the real token at "
            f"sample {r['sample']}, position {r['position']} (id {r['token']}) changes by {r['max_abs_diff']:.3g} "
            f"> tolerance {m['tolerance']:.3g}"
        )
        if r["mask_effect"] == 0:
            text += "; attention_mask has no effect on the output: it is accepted and ignored"
            if m.get("mask_from", "forward") != "forward":
                text += f" (forward takes it through **kwargs, as {m['mask_from']})"
        elif side == "left" and not m["takes_position_ids"]:
            text += (
                "; the forward takes no position_ids, so if positions count from the first pad token, "
                "derive them from attention_mask (mask.cumsum(-1) - 1)"
            )
        problems.append(text)
    if problems:
        return Verdict("failed", "; ".join(problems))
    sides = ", ".join(f"{side} max |Δ| = {r['max_abs_diff']:.3g}" for side, r in m["sides"].items())
    return Verdict(
        "passed",
        f"real tokens' outputs unchanged by {m['pad_tokens']} masked pad tokens "
        f"({sides}; tolerance {m['tolerance']:.3g})",
    )


CHECK = Check(
    name="padding",
    family="padding",
    summary="left and right padding with an attention mask leave the real tokens' outputs unchanged",
    measure=measure,
    judge=judge,
    params={
        "pad_tokens": Param(int, 4, "pad tokens added to every sample", minimum=1),
        "sides": Param(list, ["left", "right"], "padding sides to probe", item_type=str, choices=("left", "right")),
        "pad_token_id": Param(int, -1, "token id of the pads (-1: the config's pad_token_id, else 0)", minimum=-1),
        "tolerance_scale": Param(
            float,
            1.0,
            "multiplies the dtype's tolerance (fp32 1e-5, fp16 4e-3, bf16 3e-2, times max(1, max |output|))",
            minimum=0,
        ),
    },
)
