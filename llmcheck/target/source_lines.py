"""Where in the user's code something happened: the innermost stack frame outside torch.

Graph breaks (``torch._dynamo.explain``) and export failures carry a stack that runs from the
model's forward down into torch; the line a user can change is the innermost frame that is not
torch's own. A Hugging Face model's frames (transformers) count as the model's code.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from types import TracebackType


def _torch_dir() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def user_frame(frames: Iterable[traceback.FrameSummary]) -> dict | None:
    """``{"file", "line", "function", "code"}`` of the innermost frame outside torch (and outside
    llmcheck, which only calls the model, and outside generated code such as ``<string>``), or None."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    skip = (_torch_dir(), here)
    found = None
    for f in frames:
        if not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(skip):
            found = f
    if found is None:
        return None
    return {"file": found.filename, "line": found.lineno, "function": found.name, "code": (found.line or "").strip()}


def from_traceback(tb: TracebackType | None) -> dict | None:
    return user_frame(traceback.extract_tb(tb)) if tb is not None else None


def where(frame: dict | None) -> str:
    """``model.py:12 in forward (if x.sum() > 0:)`` for a frame from `user_frame`."""
    if not frame:
        return "an unknown line"
    code = f" ({frame['code']})" if frame.get("code") else ""
    return f"{os.path.basename(frame['file'])}:{frame['line']} in {frame['function']}{code}"
