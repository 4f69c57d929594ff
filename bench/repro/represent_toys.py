"""Toy models for the representation reproductions (concept depth, convergent learning): parity-of-k queries.

An input is 8 random bits then a query token ``Qk`` (k = 1, 2, 3); the answer, read at the query,
is the parity of the first k bits. A 4-layer :class:`attnlab.models.tiny.TinyTransformer` learns all
three queries together in under a thousand steps on one CPU thread.
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


def train_toy(seed: int, *, steps: int = 800, dim: int = 64, layers: int = 4) -> tuple[TinyTransformer, float]:
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


def residual_permuted(model: TinyTransformer, perm: torch.Tensor) -> TinyTransformer:
    """A copy of ``model`` whose residual stream is ``model``'s with its units reordered: ``state_copy = state[..., perm]``.

    LayerNorm is blind to the order of units, so the copy computes the same function.
    """
    import copy

    out = copy.deepcopy(model)
    reads = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "mlp.0.weight", "head.weight")  # (out, C): columns
    writes = ("embed.weight", "pos.weight")  # (rows, C): columns too
    per_unit = ("o_proj.weight", "mlp.2.weight", "mlp.2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name.endswith(reads + writes):
                p.copy_(p[:, perm])
            elif name.endswith(per_unit) or name in ("norm.weight", "norm.bias"):
                p.copy_(p[perm])
            elif name.endswith(("mlp.0.bias", "head.bias")):  # hidden units and vocabulary: not residual units
                continue
            else:
                raise ValueError(f"no permutation rule for {name} {tuple(p.shape)}")
    return out
