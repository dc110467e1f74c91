"""input-pipeline: data loading keeps up with the model's training and inference steps.

Times ``batches`` batches from @llmcheck.train_data and @llmcheck.eval_data on their own (the
first batch, which pays for worker start-up, is reported apart), then the model's training step
and inference forward on batches already in memory. Training is input-bound when the loader
delivers fewer batches per second than the model consumes (times ``min_headroom``). Then one
suggested setting is measured: more workers (and pinned memory on CUDA) for a map-style
DataLoader, prefetching in a background thread for any other iterable. Catches a loader that
starves training: decoding or tokenising in the loop, ``num_workers=0``.
"""

from __future__ import annotations

from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

ROLE = {"train": "training", "eval": "inference"}


def judge(m: dict, p) -> Verdict:
    problems, notes = [], []
    for split in ("train", "eval"):
        e = m.get(split)
        if e is None:
            continue
        ratio = e["batches_per_s"] / e["model_steps_per_s"]
        text = (
            f"{split} loader {e['batches_per_s']:.3g} batches/s vs {ROLE[split]} {e['model_steps_per_s']:.3g} steps/s "
            f"({ratio:.2f}x, need >= {p.min_headroom:g}x; first batch {e['first_batch_s'] * 1e3:.0f} ms); "
            f"loader: {e['loader']}"
        )
        if ratio >= p.min_headroom:
            notes.append(text)
            continue
        tip = e.get("suggestion") or {}
        if tip.get("speedup"):
            text += f"; suggested {tip['setting']}: measured {tip['speedup']:.2f}x ({tip['detail']})"
        elif tip:
            text += f"; suggested {tip['setting']} ({tip['detail']})"
        problems.append(f"{ROLE[split]} is input-bound: {text}")
    if problems:
        return Verdict("failed", "; ".join(problems))
    return Verdict("passed", "; ".join(notes))


def describe(loader) -> str:
    """The loader's settings as the message shows them."""
    from torch.utils.data import DataLoader

    if isinstance(loader, DataLoader):
        return (
            f"DataLoader(num_workers={loader.num_workers}, pin_memory={loader.pin_memory}, "
            f"prefetch_factor={loader.prefetch_factor}, persistent_workers={loader.persistent_workers}, "
            f"batch_size={loader.batch_size})"
        )
    return (
        f"{type(loader).__name__} (a plain iterable: batches are made in the training loop's thread; "
        f"no workers, pinned memory or prefetch)"
    )


def measure(ctx, p) -> dict:
    from llmcheck.checks.input_pipeline.rates import loader_rate, model_rate, suggest
    from llmcheck.target.batches import declared, source

    t = ctx.target
    splits = [s for s in ("train", "eval") if declared(t, s)]
    if not splits:
        raise Skip("no @llmcheck.train_data or @llmcheck.eval_data in the model file: no input pipeline to time")
    out = {}
    for split in splits:
        loader = source(t, split)
        timing = loader_rate(ctx, t, split, loader, p)
        ctx.record_samples(f"{split}_batch_s", timing["times"])
        entry = {
            "loader": describe(loader),
            "batches_per_s": timing["rate"],
            "first_batch_s": timing["first"],
            "batches_timed": len(timing["times"]),
            "model_steps_per_s": model_rate(ctx, t, timing["kept"], p, train=split == "train"),
        }
        if entry["batches_per_s"] < p.min_headroom * entry["model_steps_per_s"]:
            entry["suggestion"] = suggest(ctx, t, split, loader, timing, p)
        out[split] = entry
    return out


CHECK = Check(
    name="input-pipeline",
    family="input-pipeline",
    timing=True,
    summary="data loading keeps up with the model's training and inference steps; measures a faster setting",
    measure=measure,
    judge=judge,
    params={
        "batches": Param(int, 20, "batches timed from each loader, after the first", minimum=1),
        "steps": Param(int, 10, "model steps timed, after 2 warm-up steps", minimum=1),
        "min_headroom": Param(
            float, 1.0, "loader batches/s must be at least this multiple of model steps/s", minimum=0
        ),
        "workers": Param(
            int, 0, "num_workers of the suggested DataLoader (0: twice the current, at least 2)", minimum=0
        ),
        "prefetch": Param(int, 4, "batches a background thread prefetches for a plain iterable", minimum=1),
        "time_budget": Param(float, 10.0, "seconds spent timing one loader before stopping early", minimum=0.1),
        "lr": Param(float, 1e-3, "learning rate of the default AdamW (ignored with @llmcheck.optimizer)", minimum=0),
    },
)
