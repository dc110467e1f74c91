"""Batches from the model file's ``@llmcheck.train_data`` and ``@llmcheck.eval_data`` hooks.

Shared by the checks that read real data (training, data, input-pipeline, generation). Each call
to a hook gives a fresh iterable (an epoch); errors raised while iterating it are the user's and
are reported as theirs. Worker side: imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from llmcheck.target.model import ContractError, UserCodeError

KINDS = {"train": "train_data", "eval": "eval_data"}


def declared(target, split: str) -> bool:
    """Whether the model file declares the hook for ``split`` ("train" or "eval")."""
    return target.hooks.get(KINDS[split]) is not None


def hook_name(target, split: str) -> str:
    hook = target.hooks.get(KINDS[split])
    return f"@llmcheck.{KINDS[split]} {hook.fn.__name__ if hook else '(not declared)'}"


def source(target, split: str) -> Iterable:
    """A fresh iterable from the hook (raises ContractError when it is not iterable)."""
    made = target.train_batches() if split == "train" else target.eval_batches()
    if made is None:
        raise ContractError(f"model {target.name} declares no {KINDS[split]}; add @llmcheck.{KINDS[split]}")
    if not isinstance(made, Iterable):
        raise ContractError(
            f"{hook_name(target, split)} returned {type(made).__name__}; expected an iterable of "
            f"batches (a generator, a list or a torch DataLoader)"
        )
    return made


def next_batch(iterator: Iterator, what: str) -> Any:
    """``next(iterator)`` with the user's exceptions wrapped; raises StopIteration at the end."""
    try:
        return next(iterator)
    except StopIteration:
        raise
    except Exception as exc:
        raise UserCodeError(f"{what} raised {type(exc).__name__} while iterating: {exc}") from exc


def checked(batch: Any, what: str, index: int) -> Any:
    """``batch`` if it is a tensor or a non-empty mapping of tensors, else a ContractError."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and batch and all(isinstance(v, torch.Tensor) for v in batch.values()):
        return batch
    kinds = {k: type(v).__name__ for k, v in batch.items()} if isinstance(batch, Mapping) else type(batch).__name__
    raise ContractError(
        f"{what} yielded {kinds} as batch {index}; expected a tensor of token ids or a mapping "
        f"of tensors such as {{'input_ids': LongTensor[batch, seq]}}"
    )


def to_device(batch: Any, device: torch.device) -> Any:
    blocking = device.type != "cuda"
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=not blocking) for k, v in batch.items()}
    return batch.to(device, non_blocking=not blocking)


def batches(target, split: str, limit: int | None = None, cycle: bool = False, device: bool = True) -> Iterator:
    """Up to ``limit`` checked batches of ``split``; with ``cycle`` the hook is called again at the end
    of each epoch. Raises ContractError when the hook yields no batch at all."""
    what = hook_name(target, split)
    count, epoch_count = 0, -1
    while limit is None or count < limit:
        if epoch_count == 0:
            raise ContractError(f"{what} yielded no batch; it must yield at least one")
        if epoch_count > 0 and not cycle:
            return
        iterator, epoch_count = iter(source(target, split)), 0
        while limit is None or count < limit:
            try:
                batch = checked(next_batch(iterator, what), what, count)
            except StopIteration:
                break
            count, epoch_count = count + 1, epoch_count + 1
            yield to_device(batch, target.device) if device else batch
