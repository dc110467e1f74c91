"""Equal up to rounding: dtype-derived tolerances for outputs that two ways of running a model
should share (compiled and eager, exported and eager, two attention kernels, checkpointed and not).

The tolerances start from ``torch.testing.assert_close``'s defaults per dtype, which judge each
element by ``atol + rtol * |expected|``. One change, the same for every dtype: the ``rtol`` term
scales with the largest finite magnitude of the whole reference tensor, not with the element.
Fused or reordered kernels round the *terms* of a reduction differently, so an element's error
follows the size of what was summed into it, and an element that came out near zero by
cancellation carries the rounding of large terms. The reference's largest magnitude stands for
that size. Nothing here is tuned to a model: the numbers are assert_close's, listed below.

Worker side (imports torch).
"""

from __future__ import annotations

import torch

# torch.testing.assert_close's default (rtol, atol) per dtype (torch/testing/_comparison.py).
ASSERT_CLOSE = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def magnitude(reference: torch.Tensor) -> float:
    """The largest finite |value| of ``reference`` (0 when it has none)."""
    finite = reference.detach().float()
    finite = finite[torch.isfinite(finite)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def allowed(dtype: torch.dtype, reference: torch.Tensor, scale: float = 1.0) -> float:
    """The largest |Δ| accepted against ``reference``: (atol + rtol * max |reference|) * ``scale``,
    with assert_close's (rtol, atol) for ``dtype`` (float32's for any other dtype)."""
    rtol, atol = ASSERT_CLOSE.get(dtype, ASSERT_CLOSE[torch.float32])
    return (atol + rtol * magnitude(reference)) * scale


def difference(got: torch.Tensor, want: torch.Tensor) -> dict:
    """max |got - want| and where it is (NaN against a number counts as inf; two NaNs are equal);
    ``shape_mismatch`` when the shapes differ."""
    if got.shape != want.shape:
        return {"max_abs_diff": float("inf"), "shape_mismatch": [list(got.shape), list(want.shape)]}
    a, b = got.detach().float(), want.detach().float()
    diff = (a - b).abs().masked_fill(torch.isnan(a) & torch.isnan(b), 0.0)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    if diff.numel() == 0:
        return {"max_abs_diff": 0.0, "index": []}
    flat = int(diff.argmax())
    return {
        "max_abs_diff": float(diff.flatten()[flat]),
        "index": [int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)],
    }


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient by name (parameters without one are left out)."""
    return {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None}


def compare_gradients(got: dict, want: dict, dtype: torch.dtype, scale: float = 1.0) -> dict:
    """Gradients of two runs, parameter by parameter: those only one run gave a non-zero gradient,
    and those that differ by more than the dtype's tolerance (relative to that parameter's
    largest reference gradient), worst first."""
    nonzero = lambda grads: {n for n, g in grads.items() if bool((g != 0).any())}  # noqa: E731
    only_want, only_got = sorted(nonzero(want) - nonzero(got)), sorted(nonzero(got) - nonzero(want))
    over, ratios = [], {}
    for name in sorted(set(want) & set(got)):
        d = difference(got[name], want[name])["max_abs_diff"]
        tol = allowed(dtype, want[name], scale)
        ratios[name] = (d / tol if tol > 0 else float("inf") if d > 0 else 0.0, d, tol)
        if d > tol:
            over.append({"parameter": name, "max_abs_diff": d, "tolerance": tol})
    name = max(ratios, key=lambda n: ratios[n][0], default=None)
    worst = {"parameter": name, "max_abs_diff": ratios[name][1], "tolerance": ratios[name][2]} if name else None
    over.sort(key=lambda r: -r["max_abs_diff"] / r["tolerance"])
    return {
        "parameters": len(set(want) & set(got)),
        "nonzero_only_without": only_want,
        "nonzero_only_with": only_got,
        "over_tolerance": over[:10],
        "over_count": len(over),
        "worst": worst,
    }
