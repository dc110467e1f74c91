"""The judges' side of "these outputs must be equal": NaN is never equal. Pure and torch-free, so
judges import it in the pytest process; the worker side is `llmcheck.target.tensors`.

A comparison that took NaN on both sides as "the same" would pass a model whose outputs are NaN
(eval, checkpoint, resume, frozen, batch, padding and kv-cache once did). The worker records where
the NaN is with `llmcheck.target.tensors.nan_report`; every such check words it with `nan_problem`,
so one message names the first NaN position the same way everywhere.
"""

from __future__ import annotations

from typing import Any


def nan_problem(nan: dict[str, Any], what: str = "the outputs", sides: tuple[str, ...] = ("one", "the other")) -> str:
    """NaN in ``what``: how many values on each side, the first index, and why that cannot pass.

    ``nan`` is a `nan_report` record; ``sides`` names its one or two tensors (``("the original",
    "the reloaded model")``).
    """
    counts = nan.get("counts") or [0]
    of = f" of {nan['numel']}" if nan.get("numel") else ""
    if len(counts) == 2 and all(counts):
        where = f"NaN in {what} on both sides ({counts[0]}{of} values in {sides[0]}, {counts[1]} in {sides[1]})"
    elif len(counts) == 2:
        where = f"NaN in {what}, in {sides[0] if counts[0] else sides[1]} only ({max(counts)}{of} values)"
    else:
        where = f"NaN in {what} ({counts[0]}{of} values)"
    return f"{where}, first at index {nan.get('index')}: NaN is never equal, so equality cannot be shown"
