"""``python -m llmcheck.isolation CMD_FD OUT_FD FAULT_PATH [BEAT_PATH]``: a worker process (llmcheck.isolation.child).

A shim, so that the child loop's module is imported once under its own name, never as ``__main__``.
"""

import sys

from llmcheck.isolation.child import main

main(sys.argv[1:])
