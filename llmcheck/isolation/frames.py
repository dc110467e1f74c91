"""Which stack frame is the user's: one definition for every place that reads a stack (the
watchdog's culprit, a hung tree's stuck frames, a DDP rank's line trace and tracebacks). Torch-free.

A frame is the user's unless it is llmcheck's own code, the standard library, an installed package
(site-packages) or generated code (``<string>``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)  # the llmcheck package itself
# One frame of a faulthandler dump: '  File "model.py", line 12 in forward' (most recent call first).
DUMP_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)', re.M)
# One frame of a Python traceback: 'File "model.py", line 12, in forward' (most recent call last).
TRACEBACK_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def is_user_file(path: str) -> bool:
    """Whether ``path`` is the model's own code: not llmcheck, the standard library, site-packages or ``<...>``."""
    return not (path.startswith((PACKAGE_DIR, sys.prefix, sys.base_prefix, "<")) or "site-packages" in path)


def shown(file: str, line: str | int, func: str) -> str:
    """``file:line in func`` with the file relative to the current folder (``<string>`` as it is)."""
    return f"{file if file.startswith('<') else os.path.relpath(file)}:{line} in {func}"


def current_thread(dump: str) -> str:
    """The block of a faulthandler dump for the thread that handled the signal ("Current thread"),
    else the first thread listed."""
    start = dump.find("Current thread")
    return (dump[start:] if start >= 0 else dump).split("\n\n")[0]


def user_frame(dump: str, fallback: bool = False) -> str:
    """``file:line in func`` of the innermost user frame of the dump's current thread; with
    ``fallback``, the innermost frame of any kind when none is the user's, else ""."""
    frames = list(DUMP_FRAME.finditer(current_thread(dump)))
    best = next((m for m in frames if is_user_file(m["file"])), frames[0] if fallback and frames else None)
    return shown(best["file"], best["line"], best["func"]) if best else ""


def innermost_frame(dump: str) -> str:
    """``file:line in func`` of the innermost frame of the current thread, library files shown from
    their package (``torch/distributed/...``), for a process stuck inside a library."""
    m = DUMP_FRAME.search(current_thread(dump))
    if not m:
        return ""
    file = m["file"].split("site-packages/")[-1] if "site-packages/" in m["file"] else os.path.relpath(m["file"])
    return f"{file}:{m['line']} in {m['func']}"


def traceback_user_line(text: str) -> str:
    """``file:line in func`` of the innermost frame of the model's own code in a printed traceback."""
    user = [m for m in TRACEBACK_FRAME.finditer(text) if is_user_file(m["file"])]
    return shown(user[-1]["file"], user[-1]["line"], user[-1]["func"]) if user else ""
