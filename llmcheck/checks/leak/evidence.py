"""The leak check's evidence and judgement: the census of live tensors and what grows between two
censuses, who holds them, trends over the per-iteration curves, and the messages. Censuses,
trends and holders run in the worker (they need torch, scipy and the live objects); `leaking` and
the messages are pure functions of the metrics.
"""

from __future__ import annotations

import gc
import sys

GRAPH_LIMIT = 100_000  # autograd nodes walked per graph before giving up counting


def _tensors(torch, objects: list):
    """The tensors among ``objects``, filtered at C speed (hundreds of thousands of objects once
    torch is imported): by exact type, so lazy proxies whose ``__class__`` warns (deprecated
    torch.distributed names) are never asked."""
    import itertools

    kinds = {k for k in set(map(type, objects)) if issubclass(k, torch.Tensor)}
    return itertools.compress(objects, map(kinds.__contains__, map(type, objects)))


def census(torch, collect: bool = True) -> tuple[dict[str, dict], list]:
    """Live tensors by "dtype[shape] device": count, bytes (each storage once) and a weak
    reference to one of them (to find its holder later); plus weak references to the live tensors
    that hold an autograd graph (after a finished step, none should)."""
    import weakref

    if collect:
        gc.collect()
    groups: dict[str, dict] = {}
    seen: set[tuple] = set()
    with_graph = []
    for obj in _tensors(torch, gc.get_objects()):
        if obj.grad_fn is not None:
            with_graph.append(weakref.ref(obj))
        dtype = str(obj.dtype).replace("torch.", "")
        key = f"{dtype}{list(obj.shape)}" + ("" if obj.device.type == "cpu" else f" {obj.device}")
        g = groups.setdefault(key, {"count": 0, "bytes": 0, "ref": None})
        g["count"] += 1
        g["ref"] = weakref.ref(obj)
        try:
            storage = obj.untyped_storage()
            if (obj.device, storage.data_ptr()) not in seen:
                seen.add((obj.device, storage.data_ptr()))
                g["bytes"] += storage.nbytes()
        except (RuntimeError, TypeError, NotImplementedError):  # sparse, meta, subclasses without storage
            pass
    return groups, with_graph


def totals(groups: dict) -> tuple[int, int]:
    return sum(g["count"] for g in groups.values()), sum(g["bytes"] for g in groups.values())


def growth(first: dict, last: dict) -> list[dict]:
    """Tensor groups with more members at the end than at the start, largest growth in bytes first."""
    out = []
    for key, g in last.items():
        before = first.get(key, {"count": 0, "bytes": 0})
        if g["count"] > before["count"]:
            out.append(
                {
                    "tensor": key,
                    "added": g["count"] - before["count"],
                    "added_bytes": g["bytes"] - before["bytes"],
                    "ref": g["ref"],
                }
            )
    return sorted(out, key=lambda g: (-g["added_bytes"], -g["added"]))


def trends(values: list[float], confidence: float) -> dict | None:
    """Theil–Sen slope of ``values`` per iteration with its confidence interval, and the slopes of
    each half of the run; None when a reading is missing (NaN)."""
    from scipy.stats import theilslopes

    if any(v != v for v in values):
        return None
    half = len(values) // 2
    whole = theilslopes(values, alpha=confidence)
    return {
        "slope": float(whole.slope),
        "low": float(whole.low_slope),
        "high": float(whole.high_slope),
        "first_half": float(theilslopes(values[:half]).slope),
        "second_half": float(theilslopes(values[half:]).slope),
        "start": values[0],
        "end": values[-1],
        "n": len(values),
    }


def _grows(trend: dict | None, threshold: float) -> bool:
    """Above the threshold, significantly above zero, and sustained over both halves of the run
    (a one-off step, such as a cache filled once, raises at most one half)."""
    return (
        trend is not None
        and trend["slope"] > threshold
        and trend["low"] > 0
        and min(trend["first_half"], trend["second_half"]) > threshold / 2
    )


def leaking(r: dict, p) -> list[str]:
    """The judged series of one phase that grow, plus "live tensors" when the census grows."""
    found = [name for name in r["judged"] if _grows(r["trends"].get(name), p.max_bytes_per_iter)]
    census = r["census_trend"]
    if census["all_deltas_positive"] and census["bytes_per_iteration"] > p.max_bytes_per_iter:
        found.append("live tensors")
    return found


def size(n: float) -> str:
    """Bytes for people: 812 B, 4.3 KiB, 1.2 MiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


SERIES = {
    "heap": "malloc heap in use",
    "rss": "RSS",
    "cuda_allocated": "CUDA allocated",
    "cuda_reserved": "CUDA reserved",
    "device_used": "device memory used",
}


def _trend_text(name: str, tr: dict, p) -> str:
    return (
        f"{SERIES.get(name, name)} +{size(tr['slope'])}/iteration over {tr['n']} iterations "
        f"(Theil–Sen, {p.confidence:.0%} CI {size(tr['low'])}–{size(tr['high'])}; halves "
        f"{size(tr['first_half'])} and {size(tr['second_half'])}; threshold {size(p.max_bytes_per_iter)})"
    )


def describe_leak(phase: str, r: dict, found: list[str], p) -> str:
    parts = [_trend_text(name, r["trends"][name], p) for name in found if name in r["trends"]]
    first, last = r["census"][0], r["census"][-1]
    parts.append(
        f"live tensors {first['tensors']} -> {last['tensors']} ({size(first['bytes'])} -> {size(last['bytes'])})"
    )
    for g in r["growing_tensors"][:3]:
        held = f" held by {g['held_by']}" if g.get("held_by") else ""
        parts.append(f"accumulating: +{g['added']} x {g['tensor']} (+{size(g['added_bytes'])}){held}")
    for h in [h for h in r["graph_holders"] if h["held_by"]][:2] or r["graph_holders"][:1]:
        parts.append(
            f"autograd graph kept alive after the step: {h['tensor']} ({h['grad_fn']}, {h['nodes']} graph "
            f"nodes; its saved tensors are invisible to a tensor census)"
            f"{' held by ' + h['held_by'] if h['held_by'] else ''}"
        )
    if "rss" not in found and r["trends"].get("rss"):
        parts.append(
            f"RSS {'+' if r['trends']['rss']['slope'] >= 0 else ''}{size(r['trends']['rss']['slope'])}/iteration"
        )
    if r.get("cuda_snapshot"):
        parts.append(f"CUDA memory snapshot: {r['cuda_snapshot']} (open at pytorch.org/memory_viz)")
    return f"{phase} steps leak: " + "; ".join(parts)


def describe_clean(phase: str, r: dict, p) -> str:
    judged = ", ".join(
        f"{SERIES.get(n, n)} {size(r['trends'][n]['slope'])}/iteration" for n in r["judged"] if r["trends"].get(n)
    )
    first, last = r["census"][0], r["census"][-1]
    return (
        f"{phase}: no growth over {r['trends'][r['judged'][0]]['n']} iterations ({judged}; threshold "
        f"{size(p.max_bytes_per_iter)}); live tensors {first['tensors']} -> {last['tensors']}"
    )


def _module_names(model) -> dict[int, str]:
    return {id(vars(m)): f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()}


def _key_of(container: dict, obj) -> str:
    return next((str(k) for k, v in container.items() if v is obj), "?")


def _where(obj, modules: dict[int, str], depth: int) -> str | None:
    """Who refers to ``obj``: a module attribute, a module-level global, or (up to ``depth``
    levels) a container that one of those holds."""
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict) and id(ref) in modules:
            return f"attribute {_key_of(ref, obj)} of module {modules[id(ref)]}"
        if (
            isinstance(ref, dict)
            and isinstance(ref.get("__name__"), str)
            and vars(sys.modules.get(ref["__name__"], sys)) is ref
        ):
            file = getattr(sys.modules[ref["__name__"]], "__file__", None) or ref["__name__"]
            return f"global {_key_of(ref, obj)} of {file.rsplit('/', 1)[-1]}"
    if depth == 0:
        return None
    for ref in gc.get_referrers(obj):
        if type(ref) in (list, dict, set, tuple) or type(ref).__name__ == "deque":
            found = _where(ref, modules, depth - 1)
            if found:
                return f"a {type(ref).__name__} in {found}"
    return None


def holder_of(obj, model) -> str | None:
    """Where a live object is kept: ``a list at attribute cache of module blocks.0 (Block)``."""
    # gc.get_referrers skips frozen objects, and the worker freezes what each check leaves alive
    # (llmcheck.isolation.child): a list at a module-level global of the model file is among them.
    gc.unfreeze()
    return _where(obj, _module_names(model), depth=2)


def _graph_nodes(fn) -> int:
    seen, stack = set(), [fn]
    while stack and len(seen) < GRAPH_LIMIT:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(next_fn for next_fn, _ in getattr(node, "next_functions", ()))
    return len(seen)


def graph_holders(refs: list, model) -> list[dict]:
    """Live tensors that still hold an autograd graph after the step, largest graph first."""
    out = []
    for ref in refs:
        t = ref()
        if t is None or t.grad_fn is None:
            continue
        out.append(
            {
                "tensor": f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}",
                "grad_fn": type(t.grad_fn).__name__,
                "nodes": _graph_nodes(t.grad_fn),
                "held_by": holder_of(t, model),
            }
        )
        del t
    # Those held by a named attribute or global first: a tensor saved inside another's graph
    # (reachable only through autograd) is part of the same story, not a second culprit.
    return sorted(out, key=lambda h: (h["held_by"] is None, -h["nodes"]))[:3]
