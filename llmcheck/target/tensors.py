"""Tensor comparisons and model-state inspection shared by the checks (worker side, imports torch)."""

from __future__ import annotations

from typing import Any

import torch


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float32 (same shapes): 0 where the values are equal, equal infinities included
    (a -inf mask minus itself is no difference), inf wherever either side is NaN: NaN is never equal."""
    a, b = a.detach().float(), b.detach().float()
    diff = (a - b).abs().masked_fill(a == b, 0.0)
    return diff.masked_fill(torch.isnan(diff), float("inf"))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|; inf when shapes differ or either side has a NaN (NaN on both sides included)."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return float(abs_diff(a, b).max())


def worst_index(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """The index of the largest |a - b| (same shapes); the first NaN when there is one."""
    diff = abs_diff(a, b)
    return [int(i) for i in torch.unravel_index(diff.flatten().argmax(), diff.shape)]


def first_nan(t: torch.Tensor) -> list[int] | None:
    """The index of the first NaN of ``t`` in row-major order, or None."""
    if not (t.is_floating_point() or t.is_complex()):
        return None
    mask = torch.isnan(t.detach()).flatten()
    if not bool(mask.any()):
        return None
    return [int(i) for i in torch.unravel_index(mask.int().argmax(), t.shape)]


def nan_report(a: torch.Tensor, b: torch.Tensor | None = None) -> dict | None:
    """Where NaN makes two tensors that must be equal unequal (or one tensor unusable): None without
    NaN, else {"index": the first NaN of ``a`` (of ``b`` when ``a`` has none), "counts": NaN values
    in a and in b, "numel": values per tensor}. Judges word it with llmcheck.target.equality."""
    tensors = [a] if b is None else [a, b]
    counts = [int(torch.isnan(t.detach()).sum()) if t.is_floating_point() else 0 for t in tensors]
    if not any(counts):
        return None
    index = next(first_nan(t) for t, n in zip(tensors, counts) if n)
    return {"index": index, "counts": counts, "numel": int(a.numel())}


def snapshot(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in named.items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], atol: float = 0.0) -> dict[str, float]:
    """Entries whose max |Δ| exceeds ``atol`` (missing ones count as inf), in ``before``'s order."""
    out = {}
    for name, old in before.items():
        new = after.get(name)
        d = float("inf") if new is None else max_abs_diff(old, new)
        if d > atol:
            out[name] = d
    return out


def hidden_state(model: torch.nn.Module) -> dict[str, Any]:
    """State a ``state_dict`` does not carry: non-persistent buffers, plain tensor attributes and
    numeric attributes of every submodule, by qualified name."""
    found: dict[str, Any] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            if module._buffers.get(name) is not None:
                found[prefix + name] = module._buffers[name]
        for name, value in vars(module).items():
            if name.startswith("_") or name == "training":
                continue
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                found[prefix + name] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                found[prefix + name] = value
    return found


def hidden_state_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str]:
    """Names in ``a`` whose value differs in ``b``, each with a short description."""
    out = {}
    for name, va in a.items():
        vb = b.get(name)
        if isinstance(va, torch.Tensor):
            if not isinstance(vb, torch.Tensor) or max_abs_diff(va, vb) > 0:
                d = max_abs_diff(va, vb) if isinstance(vb, torch.Tensor) else float("inf")
                out[name] = f"tensor {list(va.shape)}, max |Δ| = {d:.3g}"
        elif va != vb:
            out[name] = f"{va!r} vs {vb!r}"
    return out


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor (weight tying)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def untied(model: torch.nn.Module, groups: list[list[str]]) -> list[str]:
    """Groups from ``groups`` whose names no longer share storage in ``model``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    broken = []
    for names in groups:
        ptrs = {params[n].data_ptr() if n in params else None for n in names}
        if len(ptrs) > 1:
            broken.append(" = ".join(names))
    return broken


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module output (a tensor, tuple, mapping or ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return next((t for t in map(first_tensor, value) if t is not None), None)
    return None


def record_module_outputs(model: torch.nn.Module, run) -> tuple[Any, list[tuple[str, torch.Tensor]]]:
    """Call ``run()`` with forward hooks on every submodule; returns (its result, [(module, output)])
    in execution order, so two recordings can be compared to find the first module that differs."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():

        def hook(mod, args, output, name=name or "<root>"):
            t = first_tensor(output)
            if t is not None:
                seen.append((f"{name} ({type(mod).__name__})", t.detach().clone()))

        handles.append(module.register_forward_hook(hook))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return result, seen


def first_divergence(a: list[tuple[str, torch.Tensor]], b: list[tuple[str, torch.Tensor]], atol: float = 0.0):
    """(module, max |Δ|) of the first module whose recorded output differs, or None."""
    for (name, ta), (_, tb) in zip(a, b):
        d = max_abs_diff(ta, tb)
        if d > atol:
            return name, d
    return None


def first_nonfinite(recorded: list[tuple[str, torch.Tensor]]) -> str | None:
    for name, t in recorded:
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def first_nan_module(recorded: list[tuple[str, torch.Tensor]]) -> str | None:
    """The first recorded module (execution order) whose output holds a NaN: where NaN enters."""
    return next((name for name, t in recorded if first_nan(t) is not None), None)


# Rounding noise between two computations that should agree (other shapes, other kernels), per
# unit of output magnitude. fp32 and fp64 from torch.testing's defaults (rtol 1.3e-6 / 1e-7)
# widened for the different reduction orders that padding or a cache bring; half types from
# their machine epsilon (bf16 7.8e-3, fp16 9.8e-4) times a few.
RELATIVE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def tolerance(dtype: torch.dtype, reference: torch.Tensor, scale: float = 1.0) -> float:
    """The largest |Δ| accepted between outputs equal up to rounding: the dtype's relative
    tolerance times max(1, max |reference|), times ``scale``."""
    finite = reference.detach().float()
    finite = finite[torch.isfinite(finite)]
    magnitude = float(finite.abs().max()) if finite.numel() else 1.0
    return RELATIVE_TOLERANCE.get(dtype, 1e-5) * max(1.0, magnitude) * scale


class OutputTap:
    """Forward hook that swaps a module's output for a leaf tensor that requires grad, so a
    backward pass reports d(anything)/d(that output): used on the input embedding to see which
    input positions or samples an output depends on. Each call of the module adds one leaf."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.leaves, self._handle = module, [], None

    def _hook(self, module, args, output):
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        leaf = output.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return leaf

    def __enter__(self) -> OutputTap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def leaf(self, shape_prefix: tuple[int, ...]) -> torch.Tensor | None:
        """The first recorded output whose leading dimensions are ``shape_prefix``."""
        n = len(shape_prefix)
        return next((t for t in self.leaves if tuple(t.shape[:n]) == tuple(shape_prefix)), None)
