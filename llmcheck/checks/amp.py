"""amp: under autocast (``amp[bfloat16]``, ``amp[float16]``) the logits and the gradients stay within
a dtype-aware tolerance of float32 (relative error, and top-1 agreement of next-token predictions
at positions where float32 is decisive), and the speed-up over float32 is reported with its
bootstrap confidence interval, flagged "AMP slower" when the whole interval lies below 1.
Catches precision-sensitive operations run in low precision, naming the first module whose output
leaves the tolerance, and autocast that costs time instead of saving it.

Both are what-ifs unless the user opts in: precision findings fail only for a precision in ``gate``
or one the model declares it ships (``@llmcheck.model(ships=["bfloat16"])``), "AMP slower" only with
``fail_if_slower``; otherwise they pass as advisory findings, with their numbers.
"""

from __future__ import annotations

import math
from typing import Any

from llmcheck.measuring import perf, timing
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

PRECISIONS = ("bfloat16", "float16")
# @llmcheck.model(ships=[...]) names a precision either way; both mean the model runs in it.
SHIPPED_AS = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def variants(p) -> list[dict[str, Any]]:
    return [{"precision": pr} for pr in p.precisions]


def _rel(a, b) -> float:
    """‖a - b‖ / ‖b‖ in float32 (Frobenius); inf when ``b`` is zero and ``a`` is not."""
    a, b = a.detach().float(), b.detach().float()
    denom = float(b.norm())
    diff = float((a - b).norm())
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)


def _outputs(t, model, batch, precision: str, rtol: float) -> dict[str, Any]:
    import torch

    from llmcheck.target.tensors import record_module_outputs

    def run():
        return t.logits(t.forward(model, batch)).float()

    with torch.no_grad():
        ref, ref_rec = record_module_outputs(model, run)
        with perf.autocast(t.device, precision):
            low, low_rec = record_module_outputs(model, run)
    culprit = next(
        (
            (n, _rel(b, a))
            for (n, a), (_, b) in zip(ref_rec, low_rec)
            if a.is_floating_point() and a.shape == b.shape and _rel(b, a) > rtol
        ),
        (None, None),
    )
    top2 = ref.topk(2, dim=-1).values if ref.shape[-1] > 1 else None
    agree = ref.argmax(-1) == low.argmax(-1)
    out = {
        "rel_error": _rel(low, ref),
        "top1_agreement": float(agree.float().mean()),
        "positions": agree.numel(),
        "culprit": culprit[0],
        "culprit_rel_error": culprit[1],
    }
    if top2 is not None:  # decisive: float32's top-1 leads by more than the tolerance allows to move
        scale = ref.pow(2).mean(-1).sqrt()
        decisive = (top2[..., 0] - top2[..., 1]) > 2 * rtol * scale
        out["decisive_positions"] = int(decisive.sum())
        out["decisive_top1_agreement"] = float(agree[decisive].float().mean()) if decisive.any() else None
    return out


def _backward(t, batch, precision: str, scale: float) -> tuple[float, dict]:
    """(loss, gradients) of a fresh model in eval mode (dropout would draw different masks in
    the two runs), the loss multiplied by ``scale`` for the backward and the gradients divided."""
    model = t.build().eval()
    with perf.autocast(t.device, precision):
        loss, _ = t.loss(model, batch)
    (loss.float() * scale).backward()
    return float(loss.detach()), {
        n: q.grad.detach().float() / scale for n, q in model.named_parameters() if q.grad is not None
    }


def _gradients(t, batch, precision: str) -> dict[str, Any]:
    import torch

    losses = {}
    losses["float32"], ref = _backward(t, batch, "float32", 1.0)
    # float16 gradients underflow unless the loss is scaled, as GradScaler does (init 2**16, backing off on inf)
    for scale in (2.0**16, 2.0**8, 1.0) if precision == "float16" else (1.0,):
        losses[precision], low = _backward(t, batch, precision, scale)
        if all(bool(torch.isfinite(g).all()) for g in low.values()):
            break
    per = {n: _rel(low[n], g) for n, g in ref.items() if n in low and float(g.norm()) > 0}
    num = math.sqrt(sum(float((low[n] - ref[n]).norm()) ** 2 for n in per))
    den = math.sqrt(sum(float(ref[n].norm()) ** 2 for n in per))
    worst = max(per, key=per.get) if per else None
    return {
        "rel_error": num / den if den > 0 else 0.0,
        "worst_parameter": worst,
        "worst_rel_error": per.get(worst),
        "parameters": len(per),
        "loss_float32": losses["float32"],
        f"loss_{precision}": losses[precision],
        "loss_scale": scale,
    }


def _speed(ctx, t, model, batch, precision: str, plan: timing.Plan, validity: dict) -> dict[str, Any]:
    import torch

    series = {}
    for mode in ("float32", precision):
        with torch.no_grad(), perf.autocast(t.device, mode):
            ctx.progress(series=f"{mode} forward")
            series[mode] = timing.sample(lambda: t.forward(model, batch), plan, device=t.device)
        perf.keep(ctx, validity, f"{mode}_forward_ms", series[mode])
    ratio, lo, hi = timing.ratio_ci(series["float32"].samples_ms, series[precision].samples_ms, plan.confidence)
    valid = series["float32"].valid and series[precision].valid
    return {
        "speedup": ratio,
        "ci_low": lo,
        "ci_high": hi,
        "valid": valid,
        "amp_slower": valid and hi < 1.0,
        "float32": series["float32"].to_metrics(),
        precision: series[precision].to_metrics(),
    }


def measure(ctx, p) -> dict:
    from llmcheck.target.contract import UserCodeError

    t = ctx.target
    v = ctx.variant or variants(p)[0]
    precision = v["precision"]
    reason = perf.unsupported(t.device, precision, "eager")
    if reason:
        raise Skip(reason)
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # autocast is judged against a float32 eval forward: it must be finite and repeat
    require_deterministic(t)
    eps = perf.DTYPE_EPS[precision]
    rtol, grad_rtol = p.output_rtol_eps * eps, p.grad_rtol_eps * eps
    model = t.build().eval()
    batch = t.batch()
    out = {"config": dict(v), "eps": eps, "output_rtol": rtol, "grad_rtol": grad_rtol, "validity": {}}
    out["ships"] = list(getattr(t.decl, "ships", ()))
    try:
        out["outputs"] = _outputs(t, model, batch, precision, rtol)
        out["gradients"] = _gradients(t, batch, precision)
    except UserCodeError as exc:  # the model cannot run under autocast: a finding, gated like precision
        out["error"] = _cannot_run(exc)
        return out
    out["speed"] = _speed(ctx, t, model, batch, precision, timing.Plan.from_params(p), out["validity"])
    return out


def _cannot_run(exc: Exception) -> str:
    """The user's error (not llmcheck's wrapper around it), as the finding's text."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"


def gated(p, ships) -> set[str]:
    """The precisions whose precision findings fail the item: ``gate`` and what the model ships."""
    return set(p.gate) | {SHIPPED_AS[s] for s in ships or () if s in SHIPPED_AS}


def _precision_problems(m: dict, p) -> list[str]:
    pr, o, g = m["config"]["precision"], m["outputs"], m["gradients"]
    problems = []
    if not o["rel_error"] <= m["output_rtol"]:
        where = (
            f"; first module over tolerance: {o['culprit']} (rel. error {o['culprit_rel_error']:.3g})"
            if o["culprit"]
            else ""
        )
        problems.append(
            f"{pr} autocast logits differ from float32 by rel. error {o['rel_error']:.3g} > "
            f"{m['output_rtol']:.3g} ({p.output_rtol_eps:g} x eps {m['eps']:.3g}){where}"
        )
    agree = o.get("decisive_top1_agreement")
    if agree is not None and agree < p.min_top1_agreement:
        problems.append(
            f"next-token top-1 agrees with float32 at {agree:.1%} of {o['decisive_positions']} decisive "
            f"positions < {p.min_top1_agreement:.0%}"
        )
    if not g["rel_error"] <= m["grad_rtol"]:
        problems.append(
            f"{pr} autocast gradients differ from float32 by rel. error {g['rel_error']:.3g} > {m['grad_rtol']:.3g} "
            f"({p.grad_rtol_eps:g} x eps); worst parameter {g['worst_parameter']} ({g['worst_rel_error']:.3g})"
        )
    return problems


def _speed_text(m: dict, p) -> str:
    pr, s = m["config"]["precision"], m["speed"]
    speed = f"speed-up {s['speedup']:.2f}x ({p.confidence:.0%} CI {s['ci_low']:.2f}-{s['ci_high']:.2f})"
    if not s["valid"]:
        speed += " [timing invalid: " + "; ".join(s["float32"]["invalid_reasons"] + s[pr]["invalid_reasons"]) + "]"
    if s["amp_slower"]:
        speed = (
            f"AMP slower: {speed} (float32 p50 {s['float32']['median_ms']:.3g} ms, {pr} {s[pr]['median_ms']:.3g} ms)"
        )
    return speed


def judge(m: dict, p) -> Verdict:
    pr = m["config"]["precision"]
    shipped = pr in gated(p, m.get("ships"))
    how = (
        f"advisory, not gated: the model is not declared to run in {pr} (declare "
        f'@llmcheck.model(ships=["{pr}"]) or set amp.gate = ["{pr}"] to gate it)'
    )
    if "error" in m:
        text = f"{pr} autocast cannot run: {m['error']}"
        return Verdict("failed", text) if shipped else Verdict("passed", f"{how}: {text}", (text,))
    problems, speed = _precision_problems(m, p), _speed_text(m, p)
    imprecise = bool(problems) and not shipped  # a what-if: reported, not failed
    gating, advisory = ([], ["; ".join(problems)]) if imprecise else (problems, [])
    if m["speed"]["amp_slower"]:
        (gating if p.fail_if_slower else advisory).append(speed)
    if gating:
        return Verdict("failed", "; ".join(gating), tuple(advisory))
    if imprecise:
        return Verdict("passed", f"{how}: {advisory[0]}; {speed}", tuple(advisory))
    o, g = m["outputs"], m["gradients"]
    agree = o.get("decisive_top1_agreement")
    top1 = (
        f"top-1 agreement {agree:.1%} at {o['decisive_positions']} decisive positions"
        if agree is not None
        else f"top-1 agreement {o['top1_agreement']:.1%} (no position where float32 is decisive)"
    )
    slower = " (advisory, not gated: set amp.fail_if_slower = true to gate it)" if advisory else ""
    return Verdict(
        "passed",
        f"{pr} autocast: logits rel. error {o['rel_error']:.3g} <= {m['output_rtol']:.3g}, {top1}, "
        f"gradients rel. error {g['rel_error']:.3g} <= {m['grad_rtol']:.3g}; {speed}{slower}",
        tuple(advisory),
    )


CHECK = Check(
    name="amp",
    family="performance",
    timing=True,
    summary="autocast outputs and gradients within a dtype-aware tolerance of float32; speed-up with its CI",
    measure=measure,
    judge=judge,
    variants=variants,
    params={
        "precisions": Param(
            list,
            ["bfloat16", "float16"],
            "autocast dtypes to check (float16 on CUDA only)",
            item_type=str,
            choices=PRECISIONS,
        ),
        "output_rtol_eps": Param(
            float, 16.0, "allowed logits relative error, in units of the dtype's unit roundoff", minimum=0
        ),
        "grad_rtol_eps": Param(
            float, 32.0, "allowed gradient relative error, in units of the dtype's unit roundoff", minimum=0
        ),
        "min_top1_agreement": Param(
            float, 0.99, "next-token top-1 agreement needed at decisive positions", minimum=0, maximum=1
        ),
        "gate": Param(
            list,
            [],
            "precisions whose precision findings fail the item; the others are advisory unless the model "
            "declares @llmcheck.model(ships=[...])",
            item_type=str,
            choices=PRECISIONS,
        ),
        "fail_if_slower": Param(
            bool, False, "fail (not only flag as advisory) when AMP is slower than float32 with confidence"
        ),
        **timing.PARAMS,
    },
)
