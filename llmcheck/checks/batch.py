"""batch: sample i's output does not depend on sample j.

Perturbation: each sample j in turn gets different tokens, and every other sample's output must
stay within a dtype-aware tolerance. Gradients: the loss of sample i alone, backpropagated to the
input embeddings (a forward hook on the embedding module), must be exactly zero on every other
sample. Both run in eval mode and in train mode (dropout masks replayed from one seed), because
statistics over the batch dimension (BatchNorm in training, a mean over dim 0) often live only in
train mode. The message names the sample pair and the first module whose output for sample i
changes.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.target.equality import nan_problem


def _perturb_sample(t, batch, j: int, gen):
    """``batch`` with sample j changed: other token ids, or noise added to float inputs."""
    import torch

    ids = t.tokens(batch)
    if ids is not None:
        vocab = t.traits.vocab_size or int(ids.max()) + 2
        changed = ids.clone()
        changed[j] = (changed[j] + torch.randint(1, vocab, changed[j].shape, generator=gen).to(ids.device)) % vocab
        return t.with_tokens(batch, changed)

    def noisy(x):
        if not x.is_floating_point():
            return x
        x = x.clone()
        x[j] += torch.randn(x[j].shape, generator=gen).to(x.device, x.dtype)
        return x

    return {k: noisy(v) for k, v in batch.items()} if isinstance(batch, Mapping) else noisy(batch)


def _sample_loss(out, ids, i: int, vocab):
    """Next-token cross-entropy of sample i alone, or the mean square of its outputs."""
    import torch.nn.functional as F

    if ids is not None and out.dim() == 3 and out.shape[-1] == vocab and ids.shape[1] > 1:
        return F.cross_entropy(out[i, :-1].float(), ids[i, 1:])
    return out[i].float().pow(2).mean()


def _first_module(model, run, batch, changed, n: int, i: int, tol: float) -> str | None:
    """The first module (execution order) whose output for sample i differs between two batches."""
    from llmcheck.target.tensors import max_abs_diff, record_module_outputs

    _, a = record_module_outputs(model, lambda: run(batch))
    _, b = record_module_outputs(model, lambda: run(changed))
    for (name, ta), (_, tb) in zip(a, b):
        if ta.dim() and ta.shape == tb.shape and ta.shape[0] == n and max_abs_diff(ta[i], tb[i]) > tol:
            return name
    return None


def _perturbation(t, model, run, batch, n: int, gen, scale) -> dict:
    import torch

    from llmcheck.target.tensors import max_abs_diff, model_dtype, nan_report, tolerance

    with torch.no_grad():
        base = run(batch)
        if base.dim() == 0 or base.shape[0] != n:
            raise Skip(f"the output has shape {list(base.shape)}; its first dimension is not the batch size {n}")
        tol = tolerance(model_dtype(model), base, scale)
        diffs, worst = [], None
        for j in range(n):
            changed = _perturb_sample(t, batch, j, gen)
            out = run(changed)
            row = [0.0 if i == j else max_abs_diff(out[i], base[i]) for i in range(n)]
            diffs.append(row)
            bad = [i for i in range(n) if row[i] > tol]
            if bad and worst is None:
                worst = {"i": bad[0], "j": j, "module": _first_module(model, run, batch, changed, n, bad[0], tol)}
    return {"tolerance": tol, "output_diff": diffs, "culprit": worst, "nan": nan_report(base)}


def _gradients(t, model, run, batch, n: int) -> dict:
    """grads[i][j]: max |d loss_i / d embedding of sample j|."""
    import torch

    from llmcheck.target.tensors import OutputTap

    module = t.input_embedding(model)
    if module is None:
        return {"gradient_probe": "skipped: the model has no input embedding module (nn.Embedding)"}
    with OutputTap(module) as tap:
        out = run(batch)
    leaf = tap.leaves[0] if tap.leaves and tap.leaves[0].shape[0] == n else None
    if leaf is None or not out.requires_grad:
        return {"gradient_probe": f"skipped: {type(module).__name__} output does not reach the output per sample"}
    ids, grads = t.tokens(batch), []
    for i in range(n):
        (g,) = torch.autograd.grad(
            _sample_loss(out, ids, i, t.traits.vocab_size), leaf, retain_graph=True, allow_unused=True
        )
        g = torch.zeros_like(leaf) if g is None else g
        grads.append(g.float().abs().flatten(1).amax(dim=1).tolist())
    return {"gradient_probe": f"hook on {type(module).__name__}", "embedding_grad": grads}


def measure(ctx, p) -> dict:
    import torch

    from llmcheck.target.model import seed_everything

    t = ctx.target
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)
    for mode in p.modes:  # compared forwards replay one seed (run() below): they must repeat under it
        require_deterministic(t, mode=mode, seed=t.seed + 23)
    batch = t.batch(batch_size=p.batch_size)
    n = p.batch_size
    out = {"batch_size": n, "modes": {}}
    for mode in p.modes:
        model = t.build().train(mode == "train")
        model.requires_grad_(False)

        def run(b, model=model):
            seed_everything(t.seed + 23)  # the same dropout masks in every train-mode forward
            return t.logits(t.forward(model, b))

        ctx.progress(mode=mode)
        gen = torch.Generator().manual_seed(t.seed + 29)
        found = _perturbation(t, model, run, batch, n, gen, p.tolerance_scale)
        found.update(_gradients(t, model, run, batch, n))
        out["modes"][mode] = found
    return out


def _grad_leak(grads: list[list[float]], rtol: float):
    for i, row in enumerate(grads):
        allowed = rtol * row[i]
        for j, g in enumerate(row):
            if j != i and g > allowed:
                return i, j, g, allowed
    return None


def judge(m: dict, p) -> Verdict:
    nan = [f"{mode} mode: {nan_problem(r['nan'])}" for mode, r in m["modes"].items() if r.get("nan")]
    if nan:  # NaN is never equal: no output can be shown unchanged, whatever the other samples do
        return Verdict("failed", "; ".join(nan))
    problems = []
    for mode, r in m["modes"].items():
        c = r["culprit"]
        if c:
            d = r["output_diff"][c["j"]][c["i"]]
            where = f"; first module whose output for sample {c['i']} changes: {c['module']}" if c["module"] else ""
            problems.append(
                f"{mode} mode: sample {c['i']}'s output changes when sample {c['j']} changes "
                f"(max |Δ| = {d:.3g} > tolerance {r['tolerance']:.3g}){where}"
            )
        leak = _grad_leak(r.get("embedding_grad", []), p.grad_rtol)
        if leak:
            i, j, g, allowed = leak
            problems.append(
                f"{mode} mode: the loss of sample {i} has gradient on the embeddings of sample {j} "
                f"(|∂| = {g:.3g} > {allowed:.3g})"
            )
    if problems:
        return Verdict("failed", "samples mix across the batch: " + "; ".join(problems))
    probes = {
        mode: "perturbation" + (" and gradient" if "embedding_grad" in r else f", gradient {r['gradient_probe']}")
        for mode, r in m["modes"].items()
    }
    return Verdict(
        "passed",
        f"the {m['batch_size']} samples are independent in "
        + ", ".join(f"{mode} mode ({how})" for mode, how in probes.items()),
    )


CHECK = Check(
    name="batch",
    family="batch",
    summary="sample i's output and gradient do not depend on sample j (perturbation and embedding gradients)",
    measure=measure,
    judge=judge,
    params={
        "batch_size": Param(int, 4, "samples in the probed batch", minimum=2),
        "modes": Param(
            list,
            ["eval", "train"],
            "model modes to probe (train mode replays dropout masks)",
            item_type=str,
            choices=("eval", "train"),
        ),
        "tolerance_scale": Param(
            float,
            1.0,
            "multiplies the dtype's tolerance for output changes "
            "(fp32 1e-5, fp16 4e-3, bf16 3e-2, times max(1, max |output|))",
            minimum=0,
        ),
        "grad_rtol": Param(
            float,
            1e-6,
            "largest gradient on another sample, relative to the sample's own, still counted as zero",
            minimum=0,
        ),
    },
)
