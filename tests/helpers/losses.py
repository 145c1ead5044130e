"""Shared inputs of the loss tests (tests/unit/losses): the two configs most of them use and random batches
whose label positions are known."""

from __future__ import annotations

import torch

CONSTANT = {"name": "constant"}
KAFT = {"name": "kaft", "alpha": 0.1, "beta": 0.5, "rewards": None}


def one_label_batch(b=5, t=7, v=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    labels = torch.full((b, t), -100)
    pos = torch.randint(1, t, (b,), generator=g)
    tok = torch.randint(0, v, (b,), generator=g)
    labels[torch.arange(b), pos] = tok
    return logits, labels, pos, tok


def ragged_batch(seed=1, v=30):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 8, v, generator=g) * 2
    labels = torch.full((3, 8), -100)
    labels[0, 7] = 3  # 1 label token
    labels[1, 4:8] = torch.tensor([1, 2, 3, 4])  # 4 label tokens
    labels[2, 2:4] = torch.tensor([5, 6])  # 2 label tokens
    return logits, labels
