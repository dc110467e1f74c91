"""Which line of the model stops it running in another precision (worker side, imports torch).

A model cast to float16 (or run under autocast) fails with ``expected m1 and m2 to have the same
dtype`` when its forward makes a tensor of a fixed dtype, ``x @ torch.eye(n)`` being the classic:
``torch.eye`` makes float32 whatever the weights are. The error names no line of the model; this
module does: the model's innermost frame in the traceback (where it raised) and, re-running the
forward under a `TorchFunctionMode`, the lines whose tensor factories made a floating tensor of
another dtype than the model computes in (where the odd tensor came from).
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from llmcheck.isolation.frames import PACKAGE_DIR, is_user_file

# Tensor factories whose dtype is fixed unless the caller passes one (``*_like`` follow their input).
FACTORIES = frozenset(
    {"eye", "zeros", "ones", "full", "empty", "arange", "linspace", "logspace", "rand", "randn", "tensor", "as_tensor"}
)
DTYPE_WORDS = re.compile(r"\b(?:c10::)?(half|bfloat16|float|double|float16|float32|float64)\b", re.I)
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def is_dtype_mismatch(exc: BaseException) -> bool:
    """Whether ``exc`` says two tensors met in different floating dtypes."""
    text = str(exc)
    return bool(re.search(r"same dtype|scalar type|dtype|should be the same", text, re.I)) and (
        len({m.lower().replace("c10::", "") for m in DTYPE_WORDS.findall(text)}) >= 2
    )


def _model_frame(filename: str) -> bool:
    """A frame of the model's code: the user's own, else a library's (a transformers model), never
    torch's or llmcheck's."""
    return not filename.startswith((TORCH_DIR, PACKAGE_DIR, "<"))


def _where(filename: str, line: int, func: str) -> dict:
    return {"file": filename, "line": line, "function": func, "code": linecache.getline(filename, line).strip()}


def raising_line(exc: BaseException) -> dict | None:
    """The model's innermost frame in ``exc``'s traceback (its cause's, when wrapped): the user's own
    code first, else the innermost library frame outside torch and llmcheck."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    frames = traceback.extract_tb(root.__traceback__)
    user = [f for f in frames if is_user_file(f.filename)] or [f for f in frames if _model_frame(f.filename)]
    return _where(user[-1].filename, user[-1].lineno, user[-1].name) if user else None


class FactoryLines(TorchFunctionMode):
    """Records the lines of the model whose tensor factories make floating tensors not in ``dtype``."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype, self.found = dtype, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in FACTORIES and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != self.dtype:
            site = self._caller()
            if site is not None:
                key = (site["file"], site["line"])
                self.found.setdefault(key, {**site, "factory": f"torch.{name}", "dtype": str(out.dtype)[6:]})
        return out

    @staticmethod
    def _caller() -> dict | None:
        frame, fallback = sys._getframe(2), None
        while frame is not None:
            filename = frame.f_code.co_filename
            if is_user_file(filename):
                return _where(filename, frame.f_lineno, frame.f_code.co_name)
            if fallback is None and _model_frame(filename):
                fallback = _where(filename, frame.f_lineno, frame.f_code.co_name)
            frame = frame.f_back
        return fallback


def diagnose(exc: BaseException, run, dtype: torch.dtype) -> dict | None:
    """For a dtype mismatch: where it raised, and the factory lines that made tensors not in
    ``dtype`` when ``run()`` (the failing forward) is called again. None for other errors."""
    if not is_dtype_mismatch(exc):
        return None
    with FactoryLines(dtype) as mode:
        try:
            run()
        except Exception:  # expected: the same mismatch
            pass
    return {"dtype": str(dtype)[6:], "raised_at": raising_line(exc), "made_at": list(mode.found.values())[:5]}


def describe(found: dict) -> str:
    """One sentence for a message: which line makes which tensor, and what to do."""
    made, raised = found.get("made_at") or [], found.get("raised_at")
    parts = []
    if made:
        sites = "; ".join(f"{_short(m)}: {m['factory']} makes {m['dtype']} (`{m['code']}`)" for m in made[:3])
        parts.append(
            f"the model makes tensors of a fixed dtype while running in {found['dtype']}: {sites}; "
            f"pass dtype=/device= from an input or a weight (e.g. dtype=x.dtype)"
        )
    if raised:
        parts.append(f"raised at {_short(raised)} (`{raised['code']}`)")
    return "; ".join(parts)


def _short(site: dict) -> str:
    """``file:line in function``, a library file from its package (``transformers/...``)."""
    file = site["file"]
    file = file.split("site-packages/")[-1] if "site-packages/" in file else os.path.relpath(file)
    return f"{file}:{site['line']} in {site['function']}"
