"""export: ``torch.export.export`` captures the model with dynamic batch and sequence dimensions,
and the exported program computes eager's outputs.

Every input tensor shaped like the batch gets ``Dim("batch")`` on its first dimension and
``Dim("seq")`` (up to max_seq_len) on its second. The exported program then runs at the run's
shape and at another batch size and length; its logits must equal eager's within assert_close's
tolerance for the dtype (`llmcheck.target.closeness`). When export fails, the message names the
first unsupported construct with its line in the model's code (a Python branch on a tensor's
value, a dimension the code pins to one size) and says whether static shapes would export. That
finding fails the item only for a model meant to be exported (``required``); otherwise it is
advisory, like every what-if the model file did not opt into. A program that exports but computes
other outputs than eager always fails.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict
from llmcheck.target.source_lines import where

# torch.export puts the user's line in its message: 'The following call raised this error:\n  File "f", line N, in fn'
RAISED_AT = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _specs(tensors: tuple, bs: int, sl: int, max_len: int) -> tuple:
    """dynamic_shapes for ``tensors``: batch and sequence dims of every [batch, seq, ...] tensor."""
    from torch.export import Dim

    dims = {0: Dim("batch", min=1, max=1024), 1: Dim("seq", min=2, max=max_len)}

    def spec(x):
        if x.dim() >= 2 and tuple(x.shape[:2]) == (bs, sl):
            return dict(dims)
        return {0: dims[0]} if x.dim() >= 1 and x.shape[0] == bs else None

    return tuple(spec(x) for x in tensors)


def _positional(t, model, batch, extra: dict):
    """(module, tensors): the model called with the batch's tensors as positional arguments and the
    other keywords fixed, so dynamic shapes need not follow each forward's signature (``**kwargs``)."""
    import torch

    keys = list(batch) if isinstance(batch, Mapping) else None

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):  # the model itself, not t.forward: strict export traces this code
            if keys is None:
                return t.logits(self.model(tensors[0], **extra))
            return t.logits(self.model(**dict(zip(keys, tensors)), **extra))

    return Call(), tuple(batch.values()) if keys is not None else (batch,)


def _failure(exc: BaseException) -> dict:
    """The exception's kind, its first lines, and the user's line it points at."""
    from llmcheck.target.source_lines import from_traceback

    text = str(exc)
    found = RAISED_AT.search(text)
    frame = (
        {"file": found[1], "line": int(found[2]), "function": found[3], "code": found[4].strip()}
        if found
        else from_traceback(exc.__traceback__)
    )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return {"error": type(exc).__name__, "message": " ".join(lines[:3])[:500], "where": frame}


def _compare(t, program, model, batch, extra: dict, p) -> dict:
    import torch

    from llmcheck.target.closeness import allowed, difference
    from llmcheck.target.tensors import model_dtype

    call, tensors = _positional(t, model, batch, extra)
    with torch.no_grad():
        want = call(*tensors)
        got = program(*tensors)
    return {
        "shape": list(tensors[0].shape[:2]),
        **difference(got, want),
        "tolerance": allowed(model_dtype(model), want, p.tolerance_scale),
    }


def _try_export(t, model, batch, extra, dynamic: tuple | None, strict: bool):
    import torch
    from torch.export import export

    call, tensors = _positional(t, model, batch, extra)
    with torch.no_grad():
        # forward(*tensors) has one parameter, the tuple: its shapes nest one level down
        return export(call, tensors, dynamic_shapes=None if dynamic is None else (dynamic,), strict=strict)


def measure(ctx, p) -> dict:
    t = ctx.target
    model, batch = t.build().eval(), t.batch()
    bs, sl = t.shape()
    max_len = t.traits.max_seq_len or 4096
    # A transformers cache object is no pytree type export can return: capture the forward without it.
    extra = {"use_cache": False} if t.takes("use_cache") else {}
    out: dict[str, Any] = {"strict": p.strict, "max_seq_len": max_len, "extra": extra}
    tensors = tuple(batch.values()) if isinstance(batch, Mapping) else (batch,)
    ctx.progress(step="export with dynamic shapes")
    try:
        program = _try_export(t, model, batch, extra, _specs(tensors, bs, sl, max_len), p.strict)
    except Exception as exc:  # export's errors are many types; each is the finding
        out["dynamic"] = _failure(exc)
        ctx.progress(step="export with static shapes")
        try:
            _try_export(t, model, batch, extra, None, p.strict)
            out["static"] = "exports"
        except Exception as static_exc:
            out["static"] = _failure(static_exc)
        return out
    from llmcheck.target.preconditions import require_deterministic, require_finite

    # the capture is judged above whatever the forward computes; the program is judged against
    # eager's eval forward, which must then be finite and repeat
    require_finite(t)
    require_deterministic(t)
    runner = program.module()
    other = (bs + 1, max(2, min(max_len, sl // 2 + 1)))
    out["runs"] = [_compare(t, runner, model, b, extra, p) for b in (batch, t.batch(*other, seed=1))]
    return out


def judge(m: dict, p) -> Verdict:
    mode = "strict" if m["strict"] else "non-strict"
    if "dynamic" in m:
        f = m["dynamic"]
        static = (
            "with static shapes it exports, so the code pins the batch or sequence size"
            if m["static"] == "exports"
            else f"static shapes fail too ({m['static']['error']} at {where(m['static']['where'])})"
        )
        text = (
            f"torch.export ({mode}, dynamic batch and seq <= {m['max_seq_len']}) fails at {where(f['where'])}: "
            f"{f['error']}: {f['message']}; {static}"
        )
        if p.required:
            return Verdict("failed", text)
        # A model not declared to be exported: a what-if, reported with its line, never a failure (DESIGN §2).
        return Verdict("passed", f"advisory, not gated (set export.required = true to gate it): {text}", (text,))
    bad = [r for r in m["runs"] if r["max_abs_diff"] > r["tolerance"]]
    if bad:
        r = bad[0]
        at = f" at index {r['index']}" if r.get("index") else ""
        return Verdict(
            "failed",
            f"the exported program's logits differ from eager at input shape {r['shape']}: max |Δ| = "
            f"{r['max_abs_diff']:.3g} > tolerance {r['tolerance']:.3g}{at}",
        )
    shapes = " and ".join(str(r["shape"]) for r in m["runs"])
    worst = max(r["max_abs_diff"] for r in m["runs"])
    return Verdict(
        "passed",
        f"torch.export ({mode}) with dynamic batch and seq <= {m['max_seq_len']}: the program equals eager at "
        f"shapes {shapes} (max |Δ| = {worst:.3g} <= tolerance {m['runs'][0]['tolerance']:.3g})",
    )


CHECK = Check(
    name="export",
    family="compile",
    summary="torch.export with dynamic batch and sequence dims succeeds (else names the line) and equals eager",
    measure=measure,
    judge=judge,
    params={
        "required": Param(
            bool, False, "the model is meant to be exported: a failed capture fails the item (else it is advisory)"
        ),
        "strict": Param(bool, False, "export with strict=True (TorchDynamo tracing) instead of torch's default"),
        "tolerance_scale": Param(
            float, 1.0, "multiplies the dtype's tolerance (assert_close's atol + rtol * max |eager|)", minimum=0
        ),
    },
)
