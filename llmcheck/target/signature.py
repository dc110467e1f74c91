"""What a model's forward takes: its first parameter (where the token ids go) and its keywords.

A forward written ``forward(self, input_ids=None, **kwargs)`` (a subclass of a Hugging Face model
that adjusts one argument, a wrapper around one) takes every keyword the model underneath takes;
reading only its own signature would judge it as taking no ``attention_mask`` or cache, and skip
the checks that matter for it. So a ``**kwargs`` is followed: to the ``forward`` of the base class
in the method resolution order (``super().forward(...)``), and, for a wrapper whose own class
adds nothing, to the one child module that is a transformers ``PreTrainedModel``. Worker side.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

OWN = "forward"  # where a keyword written in the forward's own signature comes from


@dataclass(frozen=True)
class ForwardSignature:
    first: str | None = None  # the first parameter: a bare tensor batch is bound to it
    second: str | None = None  # the next positional parameter with a default (nanoGPT's ``targets``)
    keywords: dict[str, str] = field(default_factory=dict)  # keyword -> where it was found

    def takes(self, keyword: str) -> bool:
        return keyword in self.keywords

    def source(self, keyword: str) -> str | None:
        """``"forward"`` for the forward's own keywords, else where ``**kwargs`` leads to it."""
        return self.keywords.get(keyword)


def _parameters(fn, bound: bool) -> list[inspect.Parameter] | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    return params if bound else params[1:]  # an unbound function's first parameter is self


def _named(params: list[inspect.Parameter]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]


def _var_keyword(params: list[inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _base_forwards(model):
    """(class name, unbound forward) of the classes after the one whose forward the model runs,
    stopping at torch.nn.Module (whose forward is a placeholder)."""
    import torch

    own, seen_own = type(model).forward, False
    for cls in type(model).__mro__:
        if cls is torch.nn.Module:
            return
        fn = cls.__dict__.get("forward")
        if fn is None:
            continue
        if seen_own:
            yield cls.__name__, fn
        seen_own = seen_own or fn is own


def _wrapped_child(model):
    """The one direct child that is a transformers PreTrainedModel, when there is exactly one."""
    if "transformers" not in sys.modules:
        return None
    from transformers import PreTrainedModel

    found = [(n, m) for n, m in model.named_children() if isinstance(m, PreTrainedModel)]
    return found[0] if len(found) == 1 else None


def forward_signature(model) -> ForwardSignature:
    """The forward's first parameter and every keyword it takes, following ``**kwargs``."""
    params = _parameters(model.forward, bound=True)
    if params is None:
        return ForwardSignature()
    positional = [
        p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    first = positional[0].name if positional and positional[0].kind is not inspect.Parameter.POSITIONAL_ONLY else None
    second = next((p.name for p in positional[1:2] if p.default is not inspect.Parameter.empty), None)
    keywords = dict.fromkeys(_named(params), OWN)
    open_ended = _var_keyword(params)
    for cls_name, fn in _base_forwards(model) if open_ended else ():
        base = _parameters(fn, bound=False) or []
        for name in _named(base):
            keywords.setdefault(name, f"{cls_name}.forward, through **kwargs")
        open_ended = _var_keyword(base)
        if not open_ended:
            break
    if open_ended and set(keywords.values()) == {OWN}:
        child = _wrapped_child(model)
        if child is not None:
            name, module = child
            for key in forward_signature(module).keywords:
                keywords.setdefault(key, f"{name} ({type(module).__name__}).forward, through **kwargs")
    return ForwardSignature(first, second, keywords)
