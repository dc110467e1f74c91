"""The errors of the model-file contract, and the one way user code is called. Torch-free.

A `ContractError` is the model file breaking the contract (docs/model-file.md); a `UserCodeError`
is user code that raised, with the original exception as its ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable

EXAMPLE = """\
import llmcheck

@llmcheck.model(causal=True, vocab_size=256, max_seq_len=128)
def my_model():
    return MyModel()          # a fresh torch.nn.Module on every call"""


class ContractError(Exception):
    """The model file broke the contract (docs/model-file.md); the message says how."""


class UserCodeError(Exception):
    """User code raised; the original exception is the ``__cause__``."""


def user_call(what: str, fn: Callable, *args, **kwargs):
    """Call user code; an exception becomes a UserCodeError that names ``what`` raised."""
    try:
        return fn(*args, **kwargs)
    except (UserCodeError, ContractError):
        raise
    except Exception as exc:
        raise UserCodeError(f"{what} raised {type(exc).__name__}: {exc}") from exc
