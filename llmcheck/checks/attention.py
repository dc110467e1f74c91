"""attention: every attention implementation the model can switch to gives the same outputs, under
left and right padding with a mask, in float32 and bfloat16 (float16 on CUDA).

Implementations are found, not declared: a model with ``config._attn_implementation`` (Hugging
Face's switch, and any model that copies it) runs under each of ``hf_implementations`` (eager,
sdpa); wherever the forward calls ``F.scaled_dot_product_attention``, each SDPA kernel the device
has runs it through ``torch.nn.attention.sdpa_kernel`` (CPU: math and flash; CUDA adds
efficient and cuDNN). Padding gives the samples different numbers of masked pad tokens; only the
real tokens' outputs are compared, against the first implementation, within assert_close's
tolerance for the dtype (`llmcheck.target.closeness`) times the square root of the attention calls
in one forward (rounding differences add up layer by layer). Catches a mask that is right under one
implementation only (a custom eager path that drops the padding mask); the message names the two
implementations, the sample and the position, and which of them lets the pad tokens through.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

KERNELS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION"}
CPU_KERNELS = ("math", "flash")  # torch 2.13 on CPU: efficient and cuDNN attention are CUDA kernels


def _sdpa_spy():
    """A torch function mode that counts calls to F.scaled_dot_product_attention in ``.calls``."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class SdpaCalls(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                self.calls += 1
            return func(*args, **(kwargs or {}))

    return SdpaCalls()


def _hf_switch(model) -> bool:
    return isinstance(getattr(getattr(model, "config", None), "_attn_implementation", None), str)


def _set_hf(model, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(name)
    else:
        model.config._attn_implementation = name


@contextmanager
def _using(model, impl: dict):
    if impl["hf"]:
        _set_hf(model, impl["hf"])
    if impl["kernel"]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, KERNELS[impl["kernel"]])]):
            yield
    else:
        yield


def _kernels(device, p) -> tuple[list[str], dict[str, str]]:
    if device.type == "cuda":
        return list(p.sdpa_kernels), {}
    have = [k for k in p.sdpa_kernels if k in CPU_KERNELS]
    return have, {k: f"needs CUDA (device = {device})" for k in p.sdpa_kernels if k not in CPU_KERNELS}


def _implementations(t, model, batch, p) -> tuple[list[dict], dict[str, str], dict[str, int]]:
    """(implementations to compare, unavailable ones with the reason, SDPA calls per HF implementation)."""
    import torch

    kernels, unavailable = _kernels(t.device, p)
    impls, calls = [], {}
    for hf in p.hf_implementations if _hf_switch(model) else [None]:
        try:
            with _using(model, {"hf": hf, "kernel": None}), _sdpa_spy() as spy, torch.no_grad():
                t.forward(model, batch)
        except Exception as exc:  # an implementation this install lacks (flash_attention_2 without flash-attn)
            unavailable[hf] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            continue
        calls[hf or "model"] = spy.calls
        if spy.calls:
            impls += [{"label": f"{hf}[{k}]" if hf else f"sdpa[{k}]", "hf": hf, "kernel": k} for k in kernels]
        elif hf:
            impls.append({"label": hf, "hf": hf, "kernel": None})
    return impls, unavailable, calls


def _padded(t, batch, side: str, pad: int, pad_id: int):
    """(batch, extra keywords, mask): sample i loses ``pad`` (even i) or ``pad // 2`` (odd i) of
    its tokens on ``side`` to masked pad tokens."""
    import torch

    ids = t.tokens(batch).clone()
    mask = torch.ones_like(ids)
    for i in range(ids.shape[0]):
        n = pad if i % 2 == 0 else pad // 2
        cut = slice(0, n) if side == "left" else slice(ids.shape[1] - n, ids.shape[1])
        if n:
            ids[i, cut], mask[i, cut] = pad_id, 0
    b, extra = t.with_mask(batch, ids, mask)
    return b, extra, mask


def _run(t, model, impl, inputs):
    import torch

    b, extra, _ = inputs
    with _using(model, impl), torch.no_grad():
        return t.logits(t.forward(model, b, **extra)).float()


def _compare(got, want, mask, tol: float) -> dict:
    import torch

    diff = torch.nan_to_num((got - want).abs(), nan=float("inf"))
    diff = diff.flatten(2).amax(-1).masked_fill(mask == 0, 0.0)  # real tokens only
    sample, position = divmod(int(diff.argmax()), diff.shape[1])
    return {"max_abs_diff": float(diff.max()), "sample": sample, "position": position, "tolerance": tol}


def _probe(t, model, impls, batch, padding: str, p, dtype, scale: float) -> dict:
    """One dtype and padding: each implementation against the first that runs."""
    from llmcheck.target.closeness import allowed

    pad_id = _pad_id(model, p)
    pad = min(p.pad_tokens, t.tokens(batch).shape[1] - 1)
    inputs = (batch, {}, None) if padding == "none" else _padded(t, batch, padding, pad, pad_id)
    outs, skipped = {}, {}
    for impl in impls:
        try:
            outs[impl["label"]] = _run(t, model, impl, inputs)
        except RuntimeError as exc:  # a kernel that cannot take these inputs (flash with a mask on some GPUs)
            skipped[impl["label"]] = str(exc).strip().splitlines()[0][:200]
    if not outs:
        return {"padding": padding, "skipped": skipped, "compared": {}}
    ref_label, ref = next(iter(outs.items()))
    mask = inputs[2] if inputs[2] is not None else t.tokens(batch).new_ones(t.tokens(batch).shape)
    tol = allowed(dtype, ref[mask.bool()], scale)
    compared = {label: _compare(out, ref, mask, tol) for label, out in outs.items() if label != ref_label}
    found = {"padding": padding, "reference": ref_label, "skipped": skipped, "compared": compared}
    if padding != "none" and any(c["max_abs_diff"] > tol for c in compared.values()):
        found["pad_leaks"] = _pad_leaks(t, model, impls, inputs, outs, pad_id, tol)
    return found


def _pad_leaks(t, model, impls, inputs, outs, pad_id: int, tol: float) -> list[str]:
    """The implementations whose real-token outputs change when the pad tokens' ids change."""
    b, extra, mask = inputs
    ids = t.tokens(b).masked_fill(mask == 0, pad_id + 1)
    other = (t.with_tokens(b, ids), extra, mask)
    return [
        impl["label"]
        for impl in impls
        if impl["label"] in outs
        and _compare(_run(t, model, impl, other), outs[impl["label"]], mask, tol)["max_abs_diff"] > tol
    ]


def _pad_id(model, p) -> int:
    if p.pad_token_id >= 0:
        return p.pad_token_id
    found = getattr(getattr(model, "config", None), "pad_token_id", None)
    return found if isinstance(found, int) else 0


def _dtype_skip(device, name: str) -> str | None:
    import torch

    if name == "float16" and device.type != "cuda":
        return f"float16 attention kernels are compared on CUDA only (device = {device})"
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support"
    return None


def measure(ctx, p) -> dict:
    from llmcheck.target.closeness import DTYPES

    t = ctx.target
    model, batch = t.build().eval(), t.batch()
    if t.tokens(batch) is None or t.tokens(batch).dim() != 2:
        raise Skip("the model's batch has no [batch, seq] token ids to pad")
    impls, unavailable, calls = _implementations(t, model, batch, p)
    if len(impls) < 2:
        raise Skip(
            f"no switchable attention: {t.name} has no config._attn_implementation and calls no "
            f"F.scaled_dot_product_attention with two kernels on {t.device} "
            f"(found {[i['label'] for i in impls] or 'none'}; unavailable: {unavailable or 'none'})"
        )
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # implementations are judged by comparing eval forwards: they must be finite and repeat
    require_deterministic(t)
    paddings = ["none"] + ([s for s in p.sides] if t.takes("attention_mask") else [])
    # Each attention call rounds differently under each implementation, and the differences add up
    # along the residual stream like a random walk: the tolerance grows with the square root of
    # the attention calls in one forward (counted above, not declared).
    calls_per_forward = max([1, *calls.values()])
    out: dict[str, Any] = {
        "implementations": [i["label"] for i in impls],
        "unavailable": unavailable,
        "sdpa_calls": calls,
        "paddings": paddings,
        "attention_calls": calls_per_forward,
        "tolerance_factor": p.tolerance_scale * math.sqrt(calls_per_forward),
        "skipped_dtypes": {},
        "probes": [],
    }
    for name in p.dtypes:
        reason = _dtype_skip(t.device, name)
        if reason:
            out["skipped_dtypes"][name] = reason
            continue
        model = t.build().to(DTYPES[name]).eval()
        for padding in paddings:
            ctx.progress(dtype=name, padding=padding)
            found = _probe(t, model, impls, batch, padding, p, DTYPES[name], out["tolerance_factor"])
            out["probes"].append({"dtype": name, **found})
    return out


def _problem(r: dict) -> str | None:
    """One dtype and padding: the implementations that disagree with the reference, at the worst position."""
    over = {label: c for label, c in r["compared"].items() if c["max_abs_diff"] > c["tolerance"]}
    if not over:
        return None
    label = max(over, key=lambda x: over[x]["max_abs_diff"])
    c = over[label]
    pads = "no padding" if r["padding"] == "none" else f"{r['padding']} padding"
    text = (
        f"{pads}, {r['dtype']}: {r['reference']} and {', '.join(over)} disagree; worst {label} at sample "
        f"{c['sample']}, position {c['position']} (max |Δ| = {c['max_abs_diff']:.3g} > tolerance {c['tolerance']:.3g})"
    )
    if r.get("pad_leaks"):
        text += (
            f"; under {', '.join(r['pad_leaks'])} the real tokens' outputs change when the pad tokens change: "
            "the padding mask is ignored there"
        )
    return text


def _notes(m: dict) -> str:
    notes = [f"{d} skipped: {why}" for d, why in m["skipped_dtypes"].items()]
    notes += [f"{k} unavailable: {why}" for k, why in m["unavailable"].items()]
    skipped = {f"{label} ({r['dtype']}, {r['padding']})" for r in m["probes"] for label in r["skipped"]}
    if skipped:
        notes.append("could not run " + ", ".join(sorted(skipped)))
    return ("; " + "; ".join(notes)) if notes else ""


def judge(m: dict, p) -> Verdict:
    problems = [text for text in map(_problem, m["probes"]) if text]
    impls = ", ".join(m["implementations"])
    if problems:
        return Verdict("failed", f"attention implementations disagree ({impls}): " + "; ".join(problems) + _notes(m))
    worst: dict[str, float] = {}
    for r in m["probes"]:
        for c in r["compared"].values():
            worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), c["max_abs_diff"] / c["tolerance"])
    per_dtype = ", ".join(f"{d}: worst |Δ| {w:.2g} x tolerance" for d, w in worst.items())
    pads = ", ".join("no" if x == "none" else x for x in m["paddings"])
    scaled = f"assert_close's tolerance x sqrt({m['attention_calls']} attention calls)"
    return Verdict("passed", f"{impls} agree at the real tokens with {pads} padding ({per_dtype}; {scaled}){_notes(m)}")


CHECK = Check(
    name="attention",
    family="attention",
    summary="attention implementations (HF eager/sdpa, SDPA kernels) agree under left/right padding, fp32 and bf16",
    measure=measure,
    judge=judge,
    params={
        "hf_implementations": Param(
            list,
            ["eager", "sdpa"],
            "values of config._attn_implementation to compare (models that have the switch)",
            item_type=str,
        ),
        "sdpa_kernels": Param(
            list,
            list(KERNELS),
            "F.scaled_dot_product_attention kernels to compare (CPU has math and flash)",
            item_type=str,
            choices=tuple(KERNELS),
        ),
        "dtypes": Param(
            list,
            ["float32", "bfloat16", "float16"],
            "dtypes the model is cast to (float16 on CUDA only)",
            item_type=str,
            choices=("float32", "bfloat16", "float16"),
        ),
        "sides": Param(list, ["left", "right"], "padding sides to probe", item_type=str, choices=("left", "right")),
        "pad_tokens": Param(int, 4, "masked pad tokens of the even samples (odd samples get half)", minimum=1),
        "pad_token_id": Param(int, -1, "token id of the pads (-1: the config's pad_token_id, else 0)", minimum=-1),
        "tolerance_scale": Param(
            float, 1.0, "multiplies the dtype's tolerance (assert_close's atol + rtol * max |reference|)", minimum=0
        ),
    },
)
