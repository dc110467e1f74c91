"""The sequence lengths the ``@llmcheck.inputs`` hook can make.

A tokenizer hook that opens every row with [CLS] and closes it with [SEP], or pads to a minimum
length, cannot make one token; asked for it, it returns ten. A check that explores lengths (fuzz)
must search only what the hook can make, or it judges the model on the hook's broken promise. The
hook is asked for a length; when it gives another, it is asked for the one it gave, until it
gives what it was asked. Worker side.
"""

from __future__ import annotations

from llmcheck.target.contract import ContractError

TRIES = 8


def input_lengths(target, max_len: int) -> tuple[int, int]:
    """(shortest, longest) sequence length in 1 .. ``max_len`` that the inputs hook gives exactly as
    asked; (1, max_len) without a hook (random ids have every length). Raises ContractError, naming
    the hook, when it gives no length in that range as asked."""
    hook = target.hooks.get("inputs")
    if hook is None:
        return 1, max_len
    shortest = _settle(target, 1, max_len, upward=True)
    longest = _settle(target, max_len, max_len, upward=False)
    if shortest is None or longest is None or shortest > longest:
        raise ContractError(
            f"@llmcheck.inputs {hook.fn.__name__} gives no sequence length from 1 to {max_len} as asked "
            f"(asked for 1 it gives {_made(target, 1)}, asked for {max_len} it gives {_made(target, max_len)}); "
            f"it must return token ids of the asked length [batch_size, seq_len]"
        )
    return shortest, longest


def _made(target, length: int) -> int:
    """The length of the token ids the hook gives when asked for one row of ``length``."""
    batch = target.batch(1, length, exact=False)
    ids = target.tokens(batch)
    return int(ids.shape[1]) if ids is not None and ids.dim() == 2 else length


def _settle(target, asked: int, max_len: int, upward: bool) -> int | None:
    """The first length the hook gives as asked, following what it gives from ``asked`` on (up
    from the shortest, down from the longest); None when it wanders or leaves 1 .. max_len."""
    for _ in range(TRIES):
        got = _made(target, asked)
        if got == asked:
            return asked
        if not 1 <= got <= max_len or (got < asked if upward else got > asked):
            return None
        asked = got
    return None
