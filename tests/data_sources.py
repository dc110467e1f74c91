"""Model-file text for the data-reading checks (training, data, input-pipeline, generation).

``WITH_DATA`` is tests/model_sources.py's CLEAN model plus train_data, eval_data and an
optimizer: token rows of a random walk over the vocabulary (each token is the previous one plus
1 or 2), which a small model learns within a few dozen steps. Buggy variants are built from it
with ``model_sources.variant``.
"""

from model_sources import CLEAN

HOOKS = '''

def walk(rows, seed, length=T):
    """Random-walk token rows: each token is the previous one plus 1 or 2, mod V."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(1, 3, (rows, length), generator=g)
    start = torch.randint(0, V, (rows, 1), generator=g)
    return (start + steps.cumsum(1)) % V


TRAIN, EVAL = walk(64, seed=1), walk(32, seed=2)


@llmcheck.train_data
def train_batches():
    yield from TRAIN.split(8)


@llmcheck.eval_data
def eval_batches():
    yield from EVAL.split(8)


@llmcheck.optimizer
def optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2)
'''

WITH_DATA = CLEAN + HOOKS
