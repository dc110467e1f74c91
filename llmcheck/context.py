"""What a check's ``measure(ctx, p)`` receives: a `Context` (the prepared target plus the channels
back to the parent) and its resolved `Params`. Both are exported as ``llmcheck.Context`` and
``llmcheck.Params`` for third-party check authors (docs/writing-a-check.md).

``measure`` runs in the worker process; this module imports nothing at run time, so the registry
(read in the torch-free pytest process) can name these types.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the worker-side model driver imports torch; type checkers and editors read it
    from llmcheck.target.model import Target


class Params(dict):
    """A check's resolved parameters (defaults < pyproject < ini < ``@llmcheck.model(checks=...)`` <
    command line), read as attributes: ``p.atol``, ``p.timeout``. Values are already type-checked
    against each `Param`'s type, bounds and choices; every check also has ``timeout``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; have {sorted(self)}") from None


class Context:
    """What a check's ``measure(ctx, p)`` works with, in the worker process.

    Attributes:
        target: the declared model, ready to drive (`llmcheck.target.model.Target`): ``build(seed=None)``
            gives a fresh seeded ``nn.Module`` on the run's device; ``batch(batch_size, seq_len)`` the
            inputs; ``forward(model, batch)``, ``logits(output)``, ``loss(model, batch)``,
            ``tokens(batch)``, ``optimizer(model)``, ``traits`` (causal, vocab_size, max_seq_len, ...),
            ``device`` and ``seed``.
        tmpdir: a scratch folder for this check, removed afterwards (use `artifact` to keep a file).
        variant: this item's configuration, for checks that declare ``variants`` (else ``{}``).
        samples: raw measurements kept in the result (see `record_samples`).
        artifacts: files attached to the result (see `artifact`).
    """

    def __init__(self, target: Target, tmpdir: Path, send: Callable[[dict], None]):
        self.target = target
        self.tmpdir = tmpdir
        self._send = send
        self.samples: dict[str, list[float]] = {}
        self.artifacts: dict[str, str] = {}
        self.variant: dict[str, Any] = {}

    def progress(self, **info: Any) -> None:
        """A heartbeat: tells the parent what the check is doing (shown if it then times out)."""
        self._send(
            {"op": "progress", **{k: v if isinstance(v, (int, float, str)) else repr(v) for k, v in info.items()}}
        )

    def record_samples(self, name: str, values: list[float]) -> None:
        """Keep raw measurements in the result, for comparisons between runs."""
        self.samples[name] = [float(v) for v in values]

    def artifact(self, name: str, path: str | os.PathLike) -> None:
        """Attach a file the check wrote (a trace, a snapshot) to the result."""
        self.artifacts[name] = str(path)
