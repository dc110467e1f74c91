"""What a check's measure function receives: the prepared target and ways to report progress,
raw samples and artifacts. Lives in the worker process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Context:
    """The prepared target plus the channels back to the parent."""

    def __init__(self, target, tmpdir: Path, send: Callable[[dict], None]):
        self.target = target
        self.tmpdir = tmpdir
        self._send = send
        self.samples: dict[str, list[float]] = {}
        self.artifacts: dict[str, str] = {}
        self.variant: dict[str, Any] = {}  # this item's configuration, for checks that declare variants

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
