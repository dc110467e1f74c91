"""The token ids of a batch, found by what they are, and the tensors derived from them.

The token ids are the integer tensor a forward call binds to its first parameter: the batch
itself when it is one tensor; in a mapping, the entry named like that parameter (``idx`` as well as
``input_ids``), else the only integer [batch, seq] tensor, else ``input_ids`` (transformers'
convention). ``@llmcheck.model(token_key=...)`` settles what is still ambiguous.

When a check replaces the ids (a perturbed token, a fuzzed sequence), the batch's other integer
tensors of the same shape that are computed from them follow: labels equal to the ids (the
Hugging Face convention; the model shifts them) get the new ids, and next-token targets (nanoGPT's
``targets``, ``ids[:, 1:]`` plus the token after the window) get the new ids shifted, their last
column kept (the token after the window is not in the batch). Negative entries (ignore markers,
-100 or -1) stay. Other tensors (masks, token type ids) are kept as they are. Worker side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

IDS_KEY = "input_ids"


def is_ids(x: Any) -> bool:
    """An integer tensor (not bool, not floating point, not complex)."""
    return (
        isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype is not torch.bool
    )


def find(batch: Any, first: str | None, declared: str | None = None) -> tuple[str | None, torch.Tensor | None]:
    """(key, token ids) of ``batch``; the key is None for a bare tensor, ids None when not found."""
    if isinstance(batch, torch.Tensor):
        return None, batch if is_ids(batch) else None
    if not isinstance(batch, Mapping):
        return None, None
    if declared is not None:
        return declared, batch[declared] if is_ids(batch.get(declared)) else None
    ints = {k: v for k, v in batch.items() if is_ids(v)}
    square = [k for k, v in ints.items() if v.dim() == 2]
    for key in (first, square[0] if len(square) == 1 else None, IDS_KEY, next(iter(ints)) if len(ints) == 1 else None):
        if key is not None and key in ints:
            return key, ints[key]
    return None, None


def why_not_found(batch: Any, first: str | None, declared: str | None = None) -> str:
    """Why ``find`` found no [batch, seq] token ids in ``batch``, and the fix."""
    if isinstance(batch, torch.Tensor) or not isinstance(batch, Mapping):
        kind = f"tensor of shape {list(batch.shape)} ({batch.dtype})" if isinstance(batch, torch.Tensor) else "batch"
        return f"the batch is a {kind}, not integer token ids [batch, seq]"
    shapes = ", ".join(f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in batch.items())
    if declared is not None:
        return f"the declared token_key {declared!r} is not an integer tensor of the batch ({shapes})"
    key, ids = find(batch, first, declared)
    if ids is not None:
        return f"the token ids {key} have shape {list(ids.shape)}, not [batch, seq]"
    bound = f"none is forward's first parameter {first!r}" if first else "forward's first parameter has no name"
    return (
        f"no entry of the batch ({shapes}) is known to hold the token ids: {bound}, and there is not exactly one "
        f"integer [batch, seq] tensor; declare @llmcheck.model(token_key='...')"
    )


def _derived(value: Any, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor | None:
    """``value`` recomputed for ``new`` ids when it is ``old`` (labels) or ``old`` shifted by one
    (next-token targets); None when it is neither."""
    if not is_ids(value) or value.shape != old.shape or old.dim() != 2:
        return None
    real = value >= 0
    if real.any() and torch.equal(value[real], old[real]):
        return torch.where(real, new, value)
    head, real = value[:, :-1], value[:, :-1] >= 0
    if value.shape[1] > 1 and real.any() and torch.equal(head[real], old[:, 1:][real]):
        out = value.clone()
        out[:, :-1] = torch.where(real, new[:, 1:], head)
        return out
    return None


def replace(batch: Any, key: str | None, new: torch.Tensor) -> Any:
    """``batch`` with the token ids under ``key`` replaced by ``new``; labels and targets derived
    from the old ids follow when ``new`` has their shape."""
    if not isinstance(batch, Mapping):
        return new
    key = key or IDS_KEY
    old = batch.get(key)
    out = dict(batch)
    if is_ids(old) and old.shape == new.shape:
        for k, value in batch.items():
            derived = _derived(value, old, new) if k != key else None
            if derived is not None:
                out[k] = derived
    out[key] = new
    return out


def cut(batch: Any, length: int, keep: int) -> Any:
    """The first ``keep`` positions of every per-token tensor (dim >= 2, ``length`` long) of ``batch``."""
    if isinstance(batch, Mapping):
        return {k: v[:, :keep] if v.dim() >= 2 and v.shape[1] == length else v for k, v in batch.items()}
    return batch[:, :keep]


def next_token_targets(ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets for ``ids``; the last position, whose next token is unknown, gets its own id
    (a valid class for any loss: only the logits are used)."""
    return torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
