"""Greedy decoding with a model's own cache, in the pieces the latency check times: prefill, the
first token, and one-token decode steps.

The cache convention is transformers': forward takes ``past_key_values`` (``cache`` in
transformers 5) and ``use_cache``, and returns the cache as ``.past_key_values`` / ``.cache``, under
that key in a mapping, or as the second element of a ``(logits, cache)`` tuple. Worker side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from llmcheck.target.model import ContractError

KEYWORDS = ("past_key_values", "cache")
SEARCHED = ".past_key_values, .cache, ['past_key_values'], ['cache'] or output[1]"


def cache_of(output, keyword: str):
    """The cache a forward returned: under ``keyword`` or either convention's name (attribute or
    mapping key), else the second element of a ``(logits, cache)`` tuple; None when there is none."""
    for key in (keyword, *KEYWORDS):
        found = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if found is not None:
            return found
    if isinstance(output, (tuple, list)) and len(output) > 1:
        return output[1]
    return None


class CacheDecoder:
    """Prefill and one-token steps of ``model`` through ``target``'s forward."""

    def __init__(self, target, model, keyword: str):
        self.t, self.model, self.keyword = target, model, keyword
        self.extra = {"use_cache": True} if target.takes("use_cache") else {}

    @classmethod
    def of(cls, target, model) -> CacheDecoder | None:
        """A decoder when the model's forward takes a cache keyword, else None."""
        keyword = target.cache_keyword()
        return cls(target, model, keyword) if keyword else None

    def prompt(self, batch, new_tokens: int):
        """``batch`` cut so that the prompt plus ``new_tokens`` fit in max_seq_len (None: no room)."""
        tokens = self.t.tokens(batch)
        if tokens is None or tokens.dim() != 2:
            raise ContractError(f"cannot decode {self.t.name}: {self.t.no_tokens(batch, 'decode from')}")
        sl, limit = tokens.shape[1], self.t.traits.max_seq_len
        keep = min(sl, limit - new_tokens) if limit else sl
        if keep < 1:
            return None
        return self.t.cut(batch, keep)

    def shape(self, prompt) -> tuple[int, int]:
        return tuple(self.t.tokens(prompt).shape[:2])

    def past(self, output):
        found = cache_of(output, self.keyword)
        if found is not None:
            return found
        raise ContractError(
            f"forward of {self.t.name} takes {self.keyword} but returned no cache: return "
            f"(logits, cache) or an object with .{self.keyword}"
        )

    def prefill(self, prompt):
        return self.t.forward(self.model, prompt, **self.extra)

    def first_token(self, prompt):
        """Prefill and the greedy first token, copied to the host: what a user waits for."""
        out = self.prefill(prompt)
        token = self.t.logits(out)[:, -1].argmax(-1)
        return out, token.cpu()

    def step(self, prompt, token: torch.Tensor, length: int, past):
        """One new token per sequence with the cache of ``length`` earlier positions."""
        ids = token.to(self.t.device)[:, None]
        if isinstance(prompt, Mapping):
            inputs: Any = {self.t.token_entry(prompt)[0] or self.t.ids_key(): ids}
            if "attention_mask" in prompt:
                mask = prompt["attention_mask"]
                inputs["attention_mask"] = torch.ones(mask.shape[0], length + 1, dtype=mask.dtype, device=mask.device)
        else:
            inputs = ids
        out = self.t.forward(self.model, inputs, **{self.keyword: past}, **self.extra)
        return self.t.logits(out)[:, -1].argmax(-1), self.past(out)

    def stepper(self, prompt, new_tokens: int) -> tuple[Callable[[], None], Callable[[], None]]:
        """(setup, step) for timing single decode steps: ``setup`` starts a fresh generation (an
        untimed prefill) once ``new_tokens`` steps have been taken; ``step`` decodes one token."""
        state: dict[str, Any] = {"steps": new_tokens}
        length = self.shape(prompt)[1]

        def setup() -> None:
            if state["steps"] >= new_tokens:
                out, token = self.first_token(prompt)
                state.update(token=token, past=self.past(out), length=length, steps=0)

        def step() -> None:
            state["token"], state["past"] = self.step(prompt, state["token"], state["length"], state["past"])
            state["length"] += 1
            state["steps"] += 1

        return setup, step
