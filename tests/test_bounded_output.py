"""Bounded output: a model that prints a gigabyte leaves kilobytes in the report and nothing of
size on disk, and the run finishes; tails of files are read by seeking."""

from __future__ import annotations

import re

from model_sources import variant

from llmcheck.isolation.output import Capture, read_span, read_tail

GIGABYTE = 2**30
# The first eval-mode forward prints 1 GiB in 1 MiB writes, then measures the session's scratch
# folder (where the worker's log used to grow) before it returns.
PRINTS_A_GIGABYTE = "import os, sys\nfrom pathlib import Path\nDONE = []\n" + variant(
    "    def forward(self, idx):\n",
    "    def forward(self, idx):\n"
    "        if not self.training and not DONE:\n"
    "            DONE.append(1)\n"
    "            print('FIRST LINE')\n"
    "            line = ('x' * 1023 + '\\n') * 1024\n"
    "            for _ in range(1024):\n"
    "                sys.stdout.write(line)\n"
    "            print('LAST LINE', flush=True)\n"
    "            tmp = Path(os.environ['LLMCHECK_TMP'])\n"
    "            size = sum(p.stat().st_size for p in tmp.rglob('*') if p.is_file())\n"
    "            Path(__file__).with_name('scratch_bytes.txt').write_text(str(size))\n",
)


def test_a_model_printing_a_gigabyte_leaves_a_bounded_output_and_no_big_file(run_llmcheck, pytester):
    result = run_llmcheck(PRINTS_A_GIGABYTE, "-k", "eval", "--llmcheck-timeout", "240")
    record = result.by_check["eval"]
    assert record["status"] == "passed", record["message"]
    out = record["output"]
    assert len(out.encode()) < 100_000
    assert out.startswith("FIRST LINE\n") and out.rstrip().endswith("LAST LINE")
    cut = int(re.search(r"\[\.\.\. (\d+) bytes cut \.\.\.\]", out)[1])
    assert GIGABYTE - 100_000 < cut <= GIGABYTE
    assert int((pytester.path / "scratch_bytes.txt").read_text()) < 5 * 2**20
    assert record["duration_s"] < 200


def test_a_capture_keeps_the_head_and_the_tail_and_counts_the_rest():
    capture = Capture(head=4, tail=6)
    for chunk in (b"ab", b"cdef", b"0123456789", b"XY"):
        capture.add(chunk)
    assert capture.text() == "abcd\n[... 8 bytes cut ...]\n6789XY"
    assert capture.total == 18


def test_tails_are_read_by_seeking(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"h" * 10 + b"m" * 1000 + b"t" * 10)
    assert read_tail(path, 10) == ("t" * 10, True)
    assert read_span(path, 5, head=5, tail=10) == "h" * 5 + "\n[... 1000 bytes cut ...]\n" + "t" * 10
    assert read_span(path, 0, head=2000, tail=10) == path.read_text()
    assert read_tail(tmp_path / "missing", 10) == ("", False)
