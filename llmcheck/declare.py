"""The model-file contract: decorators that mark a model factory and its optional hooks.

The decorators only attach a declaration to the function; nothing is registered globally. The
loader (`llmcheck.target.model`) finds declarations by scanning the imported file's namespace, the way
pytest finds ``test_*`` functions, so two model files never see each other's hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MARK = "__llmcheck__"
HOOK_KINDS = ("inputs", "loss", "eval_data", "train_data", "optimizer", "compressed")
# What @llmcheck.model(ships=[...]) may name: compression variants and precisions the model is
# shipped as. Their findings fail the model; every other what-if is advisory. bf16 / bfloat16 (and
# fp16 / float16) name one precision: weights cast to it (compression) and autocast in it (amp).
SHIPS = (
    "int8_dynamic",
    "torchao_int8",
    "torchao_int4",
    "bf16",
    "bfloat16",
    "fp16",
    "float16",
    "prune_unstructured",
    "prune_structured",
)
HOOK_ARITY = {"inputs": 2, "loss": 2, "eval_data": 0, "train_data": 0, "optimizer": 1, "compressed": 0}


class DeclarationError(TypeError):
    """A decorator in a model file was used with a value it cannot accept."""


@dataclass(frozen=True)
class ModelDecl:
    name: str
    factory: Callable[[], Any]
    traits: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    token_key: str | None = None  # the batch key of the token ids, when the forward's signature cannot tell
    ships: tuple[str, ...] = ()  # what-ifs the model is declared to ship (SHIPS): their findings gate


@dataclass(frozen=True)
class HookDecl:
    kind: str
    fn: Callable[..., Any]
    models: tuple[str, ...] | None  # None: every model declared in the file


def _line(fn: Callable) -> int:
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code else 0


def _check_arity(fn: Callable, n: int, what: str) -> None:
    if not callable(fn):
        raise DeclarationError(f"{what} decorates {fn!r} ({type(fn).__name__}); expected a function")
    try:
        sig = inspect.signature(fn)
        sig.bind(*([None] * n))
    except ValueError:  # builtins without a signature: accept
        return
    except TypeError:
        raise DeclarationError(
            f"{what} decorates {fn.__qualname__}{sig}, which cannot be called with {n} "
            f"positional argument{'s' if n != 1 else ''}; see docs/model-file.md"
        ) from None


def _positive_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DeclarationError(
            f"@llmcheck.model({name}={value!r}): expected a positive int, got {type(value).__name__}"
        )


def model(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    causal: bool | None = None,
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    checks: dict[str, Any] | None = None,
    token_key: str | None = None,
    ships: list[str] | tuple[str, ...] | None = None,
):
    """Declare a zero-argument factory that returns a fresh ``torch.nn.Module``.

    Traits say which checks apply; a Hugging Face model needs none (they come from its config).
    ``checks`` overrides check settings for this model: ``{"gradient": {"overfit_steps": 50}}``,
    or ``{"resume": False}`` to turn a check off. ``token_key`` names the batch entry that holds the
    token ids (``"idx"``), for batches where forward's signature leaves it ambiguous. ``ships``
    names the compressed variants and precisions the model is shipped as (``["int8_dynamic",
    "bfloat16"]``, from ``SHIPS``): their findings fail; other what-ifs are advisory.
    """
    if causal is not None and not isinstance(causal, bool):
        raise DeclarationError(f"@llmcheck.model(causal={causal!r}): expected True or False")
    _positive_int("vocab_size", vocab_size)
    _positive_int("max_seq_len", max_seq_len)
    if checks is not None and not isinstance(checks, dict):
        raise DeclarationError(f"@llmcheck.model(checks={checks!r}): expected a dict of check name -> settings")
    if token_key is not None and (not isinstance(token_key, str) or not token_key):
        raise DeclarationError(f"@llmcheck.model(token_key={token_key!r}): expected the batch key of the token ids")
    shipped = _ships(ships)

    def mark(f: Callable) -> Callable:
        _check_arity(f, 0, "@llmcheck.model")
        traits = {"causal": causal, "vocab_size": vocab_size, "max_seq_len": max_seq_len}
        decl = ModelDecl(name or f.__name__, f, traits, dict(checks or {}), _line(f), token_key, ships=shipped)
        setattr(f, MARK, decl)
        return f

    return mark(fn) if fn is not None else mark


def _ships(ships: Any) -> tuple[str, ...]:
    """``ships`` validated: a list of names from SHIPS (a misspelt one would silently gate nothing)."""
    if ships is None:
        return ()
    if isinstance(ships, str) or not isinstance(ships, (list, tuple)):
        raise DeclarationError(f'@llmcheck.model(ships={ships!r}): expected a list, e.g. ships=["int8_dynamic"]')
    unknown = [s for s in ships if s not in SHIPS]
    if unknown:
        raise DeclarationError(
            f"@llmcheck.model(ships={list(ships)!r}): unknown {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(SHIPS)} (an @llmcheck.compressed variant always gates)"
        )
    return tuple(dict.fromkeys(ships))


def _hook(kind: str):
    def decorator(fn: Callable | None = None, *, models: str | list[str] | None = None):
        names = (models,) if isinstance(models, str) else (tuple(models) if models is not None else None)

        def mark(f: Callable) -> Callable:
            _check_arity(f, HOOK_ARITY[kind], f"@llmcheck.{kind}")
            setattr(f, MARK, HookDecl(kind, f, names))
            return f

        return mark(fn) if fn is not None else mark

    decorator.__name__ = kind
    decorator.__doc__ = f"Declare the model file's ``{kind}`` hook (optionally for some models only)."
    return decorator


inputs = _hook("inputs")
loss = _hook("loss")
eval_data = _hook("eval_data")
train_data = _hook("train_data")
optimizer = _hook("optimizer")
compressed = _hook("compressed")


def declarations(namespace: dict[str, Any]) -> tuple[list[ModelDecl], list[HookDecl]]:
    """Every model and hook declared in a module namespace, in definition order."""
    models, hooks, seen = [], [], set()
    for value in list(namespace.values()):
        decl = getattr(value, MARK, None) if callable(value) else None
        if id(decl) in seen:  # the same function bound to two names
            continue
        seen.add(id(decl))
        if isinstance(decl, ModelDecl):
            models.append(decl)
        elif isinstance(decl, HookDecl):
            hooks.append(decl)
    return models, hooks
