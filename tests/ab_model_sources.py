"""Model files for the A/B tests: a stack of identical MLP blocks, so a version with one block more
(or fewer) does a fixed fraction more (or less) work on any machine: 6 blocks against 5 is a
structural slowdown of about 20 %, 4 against 5 a speedup of about 20 %."""

STACK = """
import torch
import torch.nn as nn
import llmcheck

from blocks import BLOCKS, Block

V, D, T = 64, 128, 16


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.blocks = nn.Sequential(*[Block(D) for _ in range(BLOCKS)])
        self.head = nn.Linear(D, V)

    def forward(self, idx):
        return self.head(self.blocks(self.tok(idx)))


@llmcheck.model(causal=True, vocab_size=V, max_seq_len=T)
def stack():
    return Stack()
"""

# A sibling module the model file imports: git:REF:path must check it out at REF too.
BLOCKS = """
import torch
import torch.nn as nn

BLOCKS = {n}


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))
"""


def write(folder, blocks: int, name: str = "model.py"):
    """A model file with ``blocks`` blocks in ``folder`` (with its sibling blocks.py); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocks.py").write_text(BLOCKS.format(n=blocks))
    path = folder / name
    path.write_text(STACK)
    return path
