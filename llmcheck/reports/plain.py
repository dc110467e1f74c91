"""Untrusted text made safe for a terminal: escape sequences and control characters removed.

Model names, messages, traces and captured output come from model code. Printed raw, an ANSI or OSC
sequence in them could clear the screen, rewrite earlier lines (hiding a failure), set the window
title or, on some terminals, write a hyperlink or a file. Newlines and tabs are kept.
"""

from __future__ import annotations

import re

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \\), other two-byte ESC sequences, the 8-bit
# CSI/OSC introducers, then any other C0/C1 control character except tab and newline.
SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x9d[^\x07\x1b\x9c]*[\x07\x9c]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: object) -> str:
    """``text`` as a string without terminal escape sequences or control characters (\\t and \\n kept)."""
    return SEQUENCE.sub("", str(text))
