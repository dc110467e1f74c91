"""compression: each compressed variant against the baseline on coverage, accuracy, size and speed.

Variants: int8 dynamic quantization (torch.ao, CPU), torchao int8/int4 weight-only (the
``torchao`` extra), fp16 and bf16 weights, magnitude pruning (unstructured and structured) at the
given sparsities, and the model file's ``@llmcheck.compressed`` factory (a distilled student or a
model quantized by your own recipe). The metrics hold one table row per variant: which weights it
changed (coverage), KL / top-1 / relative logit error (and perplexity on ``eval_data``), size on
disk, peak memory and speed relative to the baseline, and the row's verdict. Catches outlier
features that break int8 quantization, recipes that silently skip most weights (GPT-2's
``Conv1D``), pruning that goes too far, and "compressed" models that are bigger or slower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from llmcheck.measuring.timing import PARAMS as TIMING_PARAMS
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict
from llmcheck.settings import SettingsError, coerce

VARIANTS = (
    "int8_dynamic",
    "torchao_int8",
    "torchao_int4",
    "fp16",
    "bf16",
    "prune_unstructured",
    "prune_structured",
    "compressed",
)
PRUNE = ("prune_unstructured", "prune_structured")
# ``@llmcheck.model(ships=[...])`` names precisions as bf16 or bfloat16; the variants are bf16 / fp16.
SHIPPED_AS = {"bfloat16": "bf16", "float16": "fp16"}
# Recipes that replace only some module types: a model whose weights sit elsewhere is not covered.
RECIPE_TARGETS = {
    "int8_dynamic": ("int8 dynamic quantization", "nn.Linear"),
    "torchao_int8": ("torchao's int8 weight-only quantize_", "nn.Linear"),
    "torchao_int4": ("torchao's int4 weight-only quantize_", "nn.Linear"),
}

# Thresholds apply to every variant unless `overrides` changes them for one. Reasoning in docs/checks/compression.md.
THRESHOLDS = {
    "min_coverage": Param(
        float, 0.95, "fraction of eligible weight bytes the variant must compress", minimum=0, maximum=1
    ),
    "max_kl": Param(float, 0.03, "mean next-token KL(baseline || variant) in nats (~ e^KL - 1 perplexity)", minimum=0),
    "min_top1": Param(float, 0.9, "fraction of positions whose top-1 token is unchanged", minimum=0, maximum=1),
    "max_rel_error": Param(float, 0.1, "||Δ logits|| / ||logits||, logits centred per position", minimum=0),
    "min_cosine": Param(float, 0.99, "mean cosine similarity of outputs that are not LM logits", minimum=-1, maximum=1),
    "max_ppl_increase": Param(float, 0.03, "relative perplexity increase on eval_data", minimum=0),
    "max_size_ratio": Param(float, 1.05, "variant / baseline size on disk", minimum=0),
    "min_speedup": Param(float, 0.0, "baseline / variant median latency (0: reported, not judged)", minimum=0),
}
# int4 round-to-nearest costs +5..12 % perplexity on published models (research note 5.2).
VARIANT_DEFAULTS = {"torchao_int4": {"max_kl": 0.14, "max_ppl_increase": 0.15, "max_rel_error": 0.2, "min_top1": 0.8}}


def _plan(p) -> list[tuple[str, str, float | None]]:
    """(row name, variant kind, sparsity) for every requested variant."""
    rows = []
    for kind in dict.fromkeys(p.variants):
        if kind in PRUNE:
            rows += [(f"{kind}@{s:g}", kind, s) for s in dict.fromkeys(p.sparsities)]
        else:
            rows.append((kind, kind, None))
    return rows


def thresholds(p, name: str, kind: str) -> dict[str, float]:
    """The thresholds of one row: the check's, the variant's built-in defaults, then ``overrides``
    for the kind (``prune_unstructured``) and for the row (``prune_unstructured@0.5``)."""
    out = {k: p[k] for k in THRESHOLDS}
    out.update(VARIANT_DEFAULTS.get(kind, {}))
    overrides = _overrides(p)
    out.update(overrides.get(kind, {}))
    out.update(overrides.get(name, {}) if name != kind else {})
    return out


def _overrides(p) -> dict[str, dict[str, float]]:
    """``overrides`` validated: variant (or variant@sparsity) -> {threshold: value}."""
    source = "compression.overrides"
    if not isinstance(p.overrides, Mapping):
        raise SettingsError(
            f"{source} = {p.overrides!r}: expected a table of variant -> {{threshold: value}}, "
            f'e.g. {{"int8_dynamic": {{"max_kl": 0.05}}}}'
        )
    out = {}
    for key, table in p.overrides.items():
        if str(key).split("@")[0] not in VARIANTS:
            raise SettingsError(
                f"{source}: unknown variant {key!r}; valid: {', '.join(VARIANTS)} (prune ones may add @sparsity)"
            )
        if not isinstance(table, Mapping):
            raise SettingsError(f"{source}.{key} = {table!r}: expected a table of threshold -> value")
        for name in table:
            if name not in THRESHOLDS:
                raise SettingsError(f"{source}.{key}: unknown threshold {name!r}; valid: {', '.join(THRESHOLDS)}")
        out[str(key)] = {
            n: coerce(f"{source}.{key}.{n}", v, THRESHOLDS[n], "the check's settings") for n, v in table.items()
        }
    return out


def gated(p, ships) -> set[str]:
    """The variant kinds whose findings fail the item: ``gate``, what the model declares it ships,
    and the model file's own ``@llmcheck.compressed`` variant. Every other finding is advisory."""
    return set(p.gate) | {SHIPPED_AS.get(s, s) for s in ships or ()} | {"compressed"}


def _verdict(row: dict, p, kinds: set[str]) -> str:
    if "skipped" in row:
        return "skipped"
    if not _row_problems(row, p):
        return "passed"
    return "failed" if row["kind"] in kinds else "advisory"


# -- measure ------------------------------------------------------------------------------------
def measure(ctx, p) -> dict:
    import torch

    from llmcheck.checks.compression import variants as compress

    _overrides(p)  # a bad setting fails before any work
    t = ctx.target
    from llmcheck.target.preconditions import require_deterministic, require_finite

    require_finite(t)  # variants are judged against the baseline's eval forward: it must be finite and repeat
    require_deterministic(t)
    baseline = t.build().eval()
    batches, source = _inputs(t, p)
    ref_logits, ref_loss = compress.outputs(t, baseline, batches, with_loss=source == "eval_data")
    vocab = t.traits.vocab_size
    ref = {
        "batches": batches,
        "logits": ref_logits,
        "loss": ref_loss,
        "masks": [compress.mask_of(b, r.shape[:-1]) for b, r in zip(batches, ref_logits)],
        "lm": bool(vocab) and ref_logits[0].dim() >= 2 and ref_logits[0].shape[-1] == vocab,
    }
    with torch.no_grad():
        ref["cost"] = _footprint(ctx, baseline, batches[0], "baseline")
    rows = [_row(ctx, p, baseline, ref, *planned) for planned in _plan(p)]
    if all("skipped" in r for r in rows):
        raise Skip(f"no variant applies: {_skipped(rows)}")
    ships = list(getattr(t.decl, "ships", ()))
    for row in rows:  # the table's verdict column; judge() recomputes it from the numbers
        row["verdict"] = _verdict(row, p, gated(p, ships))
    return {
        "table": rows,
        "ships": ships,
        "inputs": source,
        "positions": next((r["positions"] for r in rows if "positions" in r), 0),
        "outputs": "LM logits" if ref["lm"] else "hidden states",
        "baseline": {**ref["cost"], "eval_loss": ref_loss},
    }


def _inputs(t, p) -> tuple[list, str]:
    if t.hooks.get("eval_data") is not None:
        from llmcheck.target.batches import batches

        return list(batches(t, "eval", limit=p.eval_batches)), "eval_data"
    return [t.batch(seed=i) for i in range(p.batches)], "generated"


def _row(ctx, p, baseline, ref, name: str, kind: str, sparsity: float | None) -> dict:
    import torch

    from llmcheck.checks.compression import variants as compress

    ctx.progress(variant=name)
    row = {"variant": name, "kind": kind, "sparsity": sparsity}
    try:
        model = compress.build(kind, baseline, ctx.target, sparsity, p.int4_group_size)
    except compress.VariantSkip as exc:
        return {**row, "skipped": str(exc)}
    except Exception as exc:  # a built-in recipe that fails on this model; the user's factory raises as theirs
        if kind == "compressed":
            raise
        return {**row, "error": f"building it raised {type(exc).__name__}: {exc}"}
    row.update(compress.coverage(baseline, model))
    owners = [n.rsplit(".", 1)[0] if "." in n else "" for n in row["changed"]]
    try:
        with torch.no_grad():
            row.update(_accuracy(ctx.target, model, ref))
            row["worst_modules"] = compress.local_errors(ctx.target, baseline, model, ref["batches"][0], owners)
            row.update(_cost(ctx, p, baseline, model, ref, name))
    except Exception as exc:  # the variant does not run (an op without a half kernel, a broken recipe)
        row["error"] = f"{type(exc).__name__}: {exc}"
        row.update(_fixed_dtype(ctx.target, model, ref["batches"][0], exc))
    return row


def _fixed_dtype(t, model, batch, exc) -> dict:
    """When the variant fails on a dtype mismatch: the lines of the model that make tensors of a
    fixed dtype (``torch.eye(n)`` stays float32 in a float16 model), added to the error."""
    from llmcheck.checks.compression import fixed_dtype
    from llmcheck.checks.compression.variants import cast, dtype_of

    dtype = dtype_of(model)
    found = fixed_dtype.diagnose(exc, lambda: t.forward(model, cast(batch, dtype)), dtype)
    return (
        {"fixed_dtype": found, "error": f"{fixed_dtype.describe(found)}; {type(exc).__name__}: {exc}"} if found else {}
    )


def _accuracy(t, model, ref) -> dict:
    from llmcheck.checks.compression import variants as compress

    logits, loss = compress.outputs(t, model, ref["batches"], with_loss=ref["loss"] is not None)
    out = compress.compare(ref["logits"], logits, ref["masks"], ref["lm"])
    if loss is not None and ref["loss"] is not None:
        out.update(ppl_base=_exp(ref["loss"]), ppl=_exp(loss), ppl_increase=_exp(loss - ref["loss"]) - 1)
    return out


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


# -- cost: size on disk, peak memory, latency ---------------------------------------------------
def _footprint(ctx, model, batch, name: str) -> dict:
    """Bytes of the saved state_dict, and the forward's peak memory: those weights plus the peak
    of live activations (CPU: torch profiler allocation events; CUDA: the allocator's peak)."""
    import torch

    from llmcheck.checks.compression.variants import cast, dtype_of

    path = ctx.tmpdir / f"{name.replace('@', '_')}.pt"
    torch.save(model.state_dict(), path)
    size = path.stat().st_size
    path.unlink()
    batch = cast(batch, dtype_of(model))
    activations = _activation_peak(lambda: ctx.target.forward(model, batch), ctx.target.device)
    return {"size_bytes": size, "activation_bytes": activations, "memory_bytes": size + activations}


def _activation_peak(fn, device) -> int:

    if device.type == "cuda":
        from llmcheck.measuring.memory import cuda_peak

        peak, before = cuda_peak(fn, device)
        return int(peak - before)
    # The autograd profiler, not torch.profiler.profile: the latter imports torch._dynamo (~5 s).
    from torch.autograd.profiler import profile

    with profile(profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.function_events, key=lambda e: e.time_range.start):  # allocations +, frees -
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _cost(ctx, p, baseline, model, ref, name: str) -> dict:
    """Footprint and latency relative to the baseline, timed with the latency check's method
    (llmcheck.measuring.timing: warm-up, sampling until the median is known, validity)."""
    from llmcheck.checks.compression.variants import cast, dtype_of
    from llmcheck.measuring import timing

    t, base_cost = ctx.target, ref["cost"]
    mine = _footprint(ctx, model, ref["batches"][0], name)
    fast, slow = ref["batches"][0], cast(ref["batches"][0], dtype_of(model))
    plan = timing.Plan.from_params(p)
    base = timing.sample(lambda: t.forward(baseline, fast), plan, device=t.device)
    var = timing.sample(lambda: t.forward(model, slow), plan, device=t.device)
    ctx.record_samples(f"latency_ms.{name}", var.samples_ms)
    ctx.record_samples(f"latency_ms.{name}.baseline", base.samples_ms)
    speed, low, high = timing.ratio_ci(base.samples_ms, var.samples_ms)
    return {
        **mine,
        "size_ratio": mine["size_bytes"] / base_cost["size_bytes"],
        "memory_ratio": mine["memory_bytes"] / base_cost["memory_bytes"],
        "latency_ms": var.median_ms,
        "baseline_latency_ms": base.median_ms,
        "speed_ratio": speed,
        "speed_ratio_ci": [low, high],
        "timing_invalid": base.reasons + var.reasons,
    }


# -- judge --------------------------------------------------------------------------------------
def _num(value) -> float:
    """A metric as a float; the strings strict JSON uses for non-finite values become those values."""
    return float(value) if value is not None else math.nan


def _problems(row: dict, th: dict[str, float]) -> list[str]:
    """What is wrong with one measured row, each with the observed value, the threshold and the culprit."""
    if "error" in row:
        return [f"could not run: {row['error']}"]
    out = []
    if row.get("coverage") is not None and not _num(row["coverage"]) >= th["min_coverage"]:
        left = row["unchanged"]
        out.append(
            f"coverage {_num(row['coverage']):.0%} of eligible weight bytes < min_coverage {th['min_coverage']:.0%}"
            + _not_applicable(row)
            + f"; left as they were: {', '.join(left[:4])}"
            + (f" (+{len(left) - 4} more)" if len(left) > 4 else "")
        )
    if row.get("nonfinite"):
        out.append(f"{row['nonfinite']} non-finite output values")
    accuracy = [
        ("kl", "next-token KL (nats)", "{:.3g}", "max_kl", 1),
        ("top1", "top-1 agreement", "{:.1%}", "min_top1", -1),
        ("rel_error", "relative logit error", "{:.3g}", "max_rel_error", 1),
        ("cosine", "output cosine", "{:.4f}", "min_cosine", -1),
        ("ppl_increase", "perplexity change on eval_data", "{:+.2%}", "max_ppl_increase", 1),
    ]
    bad = [_compare(row, *spec, th) for spec in accuracy if spec[0] in row]
    bad = [b for b in bad if b]
    if bad:
        worst = row.get("worst_modules") or []
        culprit = "; ".join(
            f"{w['module']} ({w['type']}) alone adds {_num(w['rel_error']):.3g} relative error" for w in worst[:2]
        )
        out.append(", ".join(bad) + (f"; largest local error: {culprit}" if culprit else ""))
    if "size_ratio" in row and not _num(row["size_ratio"]) <= th["max_size_ratio"]:
        out.append(
            f"size on disk {_num(row['size_ratio']):.2f}x the baseline > max_size_ratio {th['max_size_ratio']:g}"
        )
    if th["min_speedup"] > 0 and "speed_ratio" in row:
        if row["timing_invalid"]:
            out.append(f"speed-up not judged reliably: {'; '.join(row['timing_invalid'])}")
        elif not _num(row["speed_ratio"]) >= th["min_speedup"]:
            out.append(f"speed-up {_num(row['speed_ratio']):.2f}x < min_speedup {th['min_speedup']:g}")
    return out


def _not_applicable(row: dict) -> str:
    """Why a recipe left most weights alone, when their modules are of a type it does not touch, and
    what would apply: int8 dynamic on GPT-2's ``transformers Conv1D``."""
    recipe, target = RECIPE_TARGETS.get(row["kind"], (None, None))
    kinds = {k: _num(v) for k, v in (row.get("unchanged_types") or {}).items() if k != target}
    eligible = _num(row.get("eligible_bytes"))
    if recipe is None or not kinds or not eligible > 0:
        return ""
    kind, nbytes = max(kinds.items(), key=lambda kv: kv[1])
    if nbytes < 0.5 * eligible * (1 - _num(row["coverage"])):
        return ""
    fix = (
        f"convert them to {target} (transformers' Conv1D stores the weight transposed: nn.Linear takes "
        f"weight.T), or use a recipe that covers them: torchao's quantize_ with a filter_fn, or your own "
        f"weight-only int8 returned from @llmcheck.compressed"
        if "Conv1D" in kind
        else f"convert them to {target}, or return your own recipe's result from @llmcheck.compressed"
    )
    return (
        f": {recipe} replaces {target} only, and this model's weight matrices are mostly {kind} "
        f"({nbytes / eligible:.0%} of eligible weight bytes), which it leaves as they were; {fix}"
    )


def _row_problems(row: dict, p) -> list[str]:
    return _problems(row, thresholds(p, row["variant"], row["kind"]))


def _compare(row, key, label, fmt, limit, sign, th) -> str | None:
    """The observed value, the operator and the threshold when the value is outside it (NaN always is)."""
    value, bound = _num(row[key]), th[limit]
    ok = value <= bound if sign > 0 else value >= bound
    return None if ok else f"{label} {fmt.format(value)} {'>' if sign > 0 else '<'} {limit} {fmt.format(bound)}"


def _summary(row: dict) -> str:
    parts = [f"coverage {_num(row['coverage']):.0%}"] if row.get("coverage") is not None else []
    for key, fmt in (
        ("kl", "KL {:.2g}"),
        ("top1", "top-1 {:.1%}"),
        ("rel_error", "rel err {:.2g}"),
        ("cosine", "cos {:.4f}"),
        ("ppl_increase", "ppl {:+.2%}"),
        ("size_ratio", "size {:.2f}x"),
    ):
        if key in row:
            parts.append(fmt.format(_num(row[key])))
    if "speed_ratio" in row:
        speed = _num(row["speed_ratio"])
        notes = ["slower"] * (speed < 1) + ["noisy"] * bool(row["timing_invalid"])
        parts.append(f"{speed:.2f}x speed" + (f" ({', '.join(notes)})" if notes else ""))
    return f"{row['variant']} ({', '.join(parts)})"


def _skipped(rows: list[dict]) -> str:
    """Skipped variants grouped by reason: ``torchao_int8, torchao_int4 skipped: ...``."""
    by_reason: dict[str, list[str]] = {}
    for row in rows:
        if "skipped" in row:
            by_reason.setdefault(row["skipped"], []).append(row["variant"])
    return "; ".join(f"{', '.join(names)} skipped: {reason}" for reason, names in by_reason.items())


def judge(m: dict, p) -> Verdict:
    rows, kinds = m["table"], gated(p, m.get("ships"))
    judged = [(r, _row_problems(r, p)) for r in rows if "skipped" not in r]
    failed = [f"{r['variant']}: {' and '.join(probs)}" for r, probs in judged if probs and r["kind"] in kinds]
    advisory = tuple(
        f"{r['variant']}: {' and '.join(probs)}" for r, probs in judged if probs and r["kind"] not in kinds
    )
    skipped = _skipped(rows)
    tail = (f"; {_advisory_note(advisory)}" if advisory else "") + (f" [{skipped}]" if skipped else "")
    if failed:
        return Verdict("failed", "; ".join(failed) + tail, advisory)
    passed = [_summary(r) for r, probs in judged if not probs]
    on = f"on {m['positions']} {m['inputs']} positions"
    head = f"{len(passed)} variant(s) within thresholds {on}: " + "; ".join(passed) if passed else f"nothing gated {on}"
    return Verdict("passed", head + tail, advisory)


def _advisory_note(advisory: tuple[str, ...]) -> str:
    names = ", ".join(a.split(":", 1)[0] for a in advisory)
    return (
        f"advisory, not gated: {names} outside thresholds (what-ifs the model is not declared to ship; "
        f"declare @llmcheck.model(ships=[...]) or set compression.gate to gate them)"
    )


CHECK = Check(
    name="compression",
    family="compression",
    timing=True,
    summary="compressed variants (int8, int4, fp16, bf16, pruning, a student) against the baseline: "
    "coverage, accuracy, size, speed",
    measure=measure,
    judge=judge,
    timeout=600.0,
    params={
        "variants": Param(
            list,
            ["int8_dynamic", "torchao_int8", "torchao_int4", "fp16", "bf16", "compressed"],
            "variants to build and judge",
            item_type=str,
            choices=VARIANTS,
        ),
        "sparsities": Param(
            list, [0.1], "sparsities of the prune_* variants, one row each", item_type=float, minimum=0, maximum=1
        ),
        "int4_group_size": Param(int, 128, "torchao int4 group size", choices=(32, 64, 128, 256)),
        "batches": Param(int, 8, "generated batches to compare on when the model file has no eval_data", minimum=1),
        "eval_batches": Param(int, 16, "most eval_data batches to compare on", minimum=1),
        "overrides": Param(dict, {}, "per-variant thresholds: {variant or variant@sparsity: {threshold: value}}"),
        "gate": Param(
            list,
            [],
            "variants whose findings fail the item; the others are advisory unless the model declares "
            "@llmcheck.model(ships=[...]) (an @llmcheck.compressed variant always gates)",
            item_type=str,
            choices=VARIANTS,
        ),
        **THRESHOLDS,
        **{k: TIMING_PARAMS[k] for k in ("warmup_iters", "max_time_s", "max_iqr_ratio")},
    },
)
