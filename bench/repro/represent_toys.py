"""Toy models for the representation reproductions (concept depth, convergent learning): parity-of-k queries.

An input is 8 random bits then a query token ``Qk`` (k = 1, 2, 3); the answer, read at the query,
is the parity of the first k bits. A 4-layer :class:`attnlab.models.tiny.TinyTransformer` learns all
three queries together in about a thousand steps on one CPU thread.
"""

from __future__ import annotations

import torch

from attnlab.models.tiny import TinyTransformer

BITS, KS = 8, (1, 2, 3)
VOCAB = 2 + len(KS)  # 0, 1: bits; 2 + k - 1: the query Qk


def batch(n: int, g: torch.Generator, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs ``[n, 9]`` and their answers ``[n]`` (query k, or a random k per input)."""
    bits = torch.randint(0, 2, (n, BITS), generator=g)
    ks = torch.full((n,), k) if k is not None else torch.randint(1, len(KS) + 1, (n,), generator=g)
    answer = bits.cumsum(1)[torch.arange(n), ks - 1] % 2
    return torch.cat([bits, (1 + ks)[:, None]], 1), answer


def train_toy(seed: int, *, steps: int = 1200, dim: int = 64, layers: int = 4) -> tuple[TinyTransformer, float]:
    """A toy trained from ``seed`` on every query; returns it and its accuracy on 2,000 fresh inputs."""
    torch.manual_seed(seed)
    model = TinyTransformer(VOCAB, dim=dim, heads=4, layers=layers, max_len=BITS + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 1000)
    for _ in range(steps):
        ids, y = batch(128, g)
        loss = torch.nn.functional.cross_entropy(model(ids)[:, -1, :2], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, y = batch(2000, torch.Generator().manual_seed(seed + 2000))
    with torch.no_grad():
        acc = float((model(ids)[:, -1, :2].argmax(-1) == y).float().mean())
    return model, acc
