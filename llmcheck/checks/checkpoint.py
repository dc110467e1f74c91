"""checkpoint: a state_dict round trip restores the model exactly.

The state_dict goes through ``torch.save`` / ``torch.load(weights_only=True)`` and through
safetensors into an instance built from a *different* seed (and then perturbed, so a load that
restores nothing cannot pass by accident); eval outputs must match the original's. Catches state
kept outside parameters and persistent buffers, and tied weights that come apart.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Verdict
from llmcheck.target.equality import nan_problem

FORMATS = ("torch", "safetensors")


def _round_trip(fmt: str, model, fresh, path, device) -> tuple[list[str], list[str]]:
    import torch

    if fmt == "torch":
        torch.save(model.state_dict(), path)
        # weights_only=True explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off here.
        state = torch.load(path, weights_only=True, map_location=device)
        missing, unexpected = fresh.load_state_dict(state, strict=False)
    else:
        from safetensors.torch import load_model, save_model

        save_model(model, str(path))  # handles tied (shared) tensors, unlike save_file
        missing, unexpected = load_model(fresh, str(path), strict=False, device=str(device))
    return list(missing), list(unexpected)


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.tensors import (
        hidden_state,
        hidden_state_differences,
        max_abs_diff,
        nan_report,
        tied_groups,
        untied,
        worst_index,
    )

    t = ctx.target
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # the round trip is judged by comparing eval forwards: they must be finite and repeat
    require_deterministic(t, atol=p.atol)
    batch = t.batch()
    original = t.build().eval()
    with torch.no_grad():
        reference = t.logits(t.forward(original, batch))
    ties, hidden = tied_groups(original), hidden_state(original)
    results = {}
    for fmt in p.formats:
        ctx.progress(format=fmt)
        fresh = t.build(seed=t.seed + 1).eval()
        with torch.no_grad():
            for value in fresh.state_dict().values():
                if value.is_floating_point():
                    value.add_(torch.randn_like(value) * 0.02)
        path = ctx.tmpdir / f"state.{'pt' if fmt == 'torch' else 'safetensors'}"
        missing, unexpected = _round_trip(fmt, original, fresh, path, t.device)
        with torch.no_grad():
            out = t.logits(t.forward(fresh, batch))
        diff = max_abs_diff(reference, out)
        results[fmt] = {
            "max_abs_diff": diff,
            "worst_index": worst_index(reference, out) if diff > 0 and out.shape == reference.shape else None,
            "nan": nan_report(reference, out) if out.shape == reference.shape else None,
            "missing_keys": missing,
            "unexpected_keys": unexpected,
            "not_in_state_dict": hidden_state_differences(hidden, hidden_state(fresh)),
            "untied": untied(fresh, ties),
            "file_bytes": path.stat().st_size,
        }
    return {"formats": results, "tied_groups": ties, "output_shape": list(reference.shape)}


def _problems(fmt: str, r: dict, atol: float) -> list[str]:
    problems = []
    if r["missing_keys"]:
        problems.append(f"{fmt}: keys missing from the checkpoint: {', '.join(r['missing_keys'][:5])}")
    if r["unexpected_keys"]:
        problems.append(f"{fmt}: unexpected keys in the checkpoint: {', '.join(r['unexpected_keys'][:5])}")
    if r["untied"]:
        problems.append(f"{fmt}: tied weights came apart after loading: {'; '.join(r['untied'])}")
    if r.get("nan"):
        problems.append(f"{fmt}: {nan_problem(r['nan'], 'the outputs', ('the original', 'the reloaded model'))}")
    elif r["max_abs_diff"] > atol:
        where = f" at index {r['worst_index']}" if r["worst_index"] else ""
        culprit = "; ".join(f"{k} ({v})" for k, v in list(r["not_in_state_dict"].items())[:5])
        problems.append(
            f"{fmt}: outputs differ after the round trip: max |Δ| = {r['max_abs_diff']:.3g} > atol "
            f"{atol:g}{where}" + (f"; state that did not come back (not in state_dict): {culprit}" if culprit else "")
        )
    return problems


def judge(m: dict, p) -> Verdict:
    problems = [msg for fmt, r in m["formats"].items() for msg in _problems(fmt, r, p.atol)]
    if problems:
        return Verdict("failed", "; ".join(problems))
    worst = max((r["max_abs_diff"] for r in m["formats"].values()), default=0.0)
    ties = f"; {len(m['tied_groups'])} tied weight group(s) survive" if m["tied_groups"] else ""
    return Verdict(
        "passed",
        f"{' and '.join(m['formats'])} round trips into a model built from another seed "
        f"reproduce the outputs {list(m['output_shape'])} (max |Δ| = {worst:.3g} <= atol {p.atol:g}){ties}",
    )


CHECK = Check(
    name="checkpoint",
    family="checkpoint",
    summary="state_dict round trip through torch.save and safetensors reproduces outputs; tied weights survive",
    measure=measure,
    judge=judge,
    params={
        "atol": Param(
            float, 0.0, "largest |Δ| allowed between original and reloaded outputs (exact on CPU)", minimum=0
        ),
        "formats": Param(list, list(FORMATS), "serialisations to round-trip through", item_type=str, choices=FORMATS),
    },
)
