"""Training steps and RNG state capture shared by the training-side checks (worker side)."""

from __future__ import annotations

import random
import sys
from typing import Any

import torch


def train_step(target, model, optimizer, scheduler, batch, max_grad_norm: float = 0.0, norms=None) -> float:
    """One optimisation step with the target's loss; returns the loss before the step. With
    ``max_grad_norm`` > 0 the gradients' total norm is clipped to it first (as HF Trainer's
    ``max_grad_norm`` and nanoGPT's ``grad_clip`` do); ``norms``, a list, receives each step's
    total norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss, _ = target.loss(model, batch)
    loss.backward()
    if max_grad_norm > 0 or norms is not None:
        limit = max_grad_norm if max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.grad is not None], limit)
        if norms is not None:
            norms.append(float(norm))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in a form ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        kind, keys, pos, has_gauss, gauss = sys.modules["numpy"].random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and "numpy" in sys.modules:
        np = sys.modules["numpy"]
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
