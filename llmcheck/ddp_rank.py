"""``python -m llmcheck.ddp_rank``: the documented torchrun entry of the distributed check
(llmcheck.checks.distributed.torchrun), kept at this stable name."""

import sys

from llmcheck.checks.distributed.torchrun import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
