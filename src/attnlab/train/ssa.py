"""Paper 53 (information pathways, SSA): train attention on random, locally biased subsets of the keys.

Stochastically subsampled self-attention: during training every block of ``block`` queries sees
only ``keep = ⌈T / ratio⌉`` keys, drawn without replacement with weights that decay with the
distance to the block, ``w_j ∝ exp(−|j − centre| / locality)`` (in a causal model, only keys at or
before the block's last query can be drawn). The attention scores are ``[B, H, T, keep]`` instead of
``[B, H, T, T]``: memory drops about ``ratio``-fold. At inference the model uses full attention
(``model.eval()``), or the ensemble of :func:`ensemble_predict`, the mean prediction of several
subsampled passes.

    >>> from attnlab.models.tiny import TinyTransformer
    >>> model = use_ssa(TinyTransformer(11, dim=16, heads=2, layers=2), ratio=4, block=4)
    >>> _ = model.train()(torch.randint(0, 11, (2, 16)))   # subsampled: 4 keys per block of 4 queries
    >>> model.eval()(torch.randint(0, 11, (2, 16))).shape  # full attention
    torch.Size([2, 16, 11])

Training goes through :func:`attnlab.train.train` unchanged. The subsampled pass is plain PyTorch,
not :func:`attnlab.core.attend`: probes and edits see only the full-attention (eval) passes.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["SubsampledAttention", "ensemble_predict", "local_key_subset", "subsampled_attention", "use_ssa"]


def local_key_subset(
    T: int, keep: int, *, block: int, locality: float, is_causal: bool = False, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Key positions for each block of queries: ``keep`` distinct keys, drawn with weight ``exp(−|j − centre| / locality)``.

    Paper: 53, The information pathways hypothesis (SSA, locally biased sampling).

    Args:
        T: sequence length (queries and keys).
        keep: keys per query block; a block with fewer candidate keys takes them all.
        block: queries per block (the last block may be shorter).
        locality: decay length of the sampling weight, in tokens (``inf``: uniform).
        is_causal: draw only keys at or before the block's last query.
        generator: torch generator for the draw.

    Shapes:
        ``→ (index [nB, keep], valid [nB, keep])`` with ``nB = ⌈T / block⌉``; ``index`` sorted per row
        among its valid entries, padded with 0 where ``valid`` is False.

    Example:
        >>> idx, ok = local_key_subset(8, 8, block=4, locality=2.0)
        >>> idx.tolist(), bool(ok.all())
        ([[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]], True)
    """
    for name, n in (("T", T), ("keep", keep), ("block", block)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={n!r}")
    if not isinstance(locality, (int, float)) or not locality > 0:
        raise ValueError(f"locality must be a positive number of tokens (math.inf: uniform), got locality={locality!r}")
    keys = torch.arange(T, dtype=torch.float64)
    nB = math.ceil(T / block)
    index, valid = torch.zeros(nB, keep, dtype=torch.long), torch.zeros(nB, keep, dtype=torch.bool)
    for b in range(nB):
        lo, hi = b * block, min(T, (b + 1) * block)  # queries lo .. hi-1
        n = hi if is_causal else T  # candidate keys 0 .. n-1
        k = min(keep, n)
        if k == n:
            chosen = torch.arange(n)
        else:
            w = torch.exp(-(keys[:n] - (lo + hi - 1) / 2).abs() / locality)  # [n]
            chosen = torch.multinomial(w, k, replacement=False, generator=generator).sort().values
        index[b, :k], valid[b, :k] = chosen, True
    return index, valid


def subsampled_attention(q: Tensor, k: Tensor, v: Tensor, index: Tensor, valid: Tensor, *, block: int, is_causal: bool) -> Tensor:
    """Softmax attention where the queries of block ``b`` see only keys ``index[b]`` (where ``valid[b]``).

    Paper: 53, The information pathways hypothesis (SSA).

    Scores are ``[B, H, nB, block, keep]``: ``T · keep`` per head instead of ``T²``. Scale ``1/√D``.

    Shapes:
        ``q [B, H, T, D]``, ``k, v [B, Hkv, T, D]``, ``index, valid [nB, keep]`` → ``[B, H, T, D]``.
    """
    B, H, T, D = q.shape
    nB, keep = index.shape
    k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))  # [B, H, T, D]
    pad = nB * block - T
    qb = rearrange(nn.functional.pad(q, (0, 0, 0, pad)), "b h (n l) d -> b h n l d", l=block)  # [B, H, nB, block, D]
    kb, vb = k[:, :, index], v[:, :, index]  # [B, H, nB, keep, D]
    s = torch.einsum("bhnld,bhnkd->bhnlk", qb, kb) / math.sqrt(D)  # [B, H, nB, block, keep]
    allowed = valid[:, None, :].expand(nB, block, keep)  # [nB, block, keep]
    if is_causal:
        pos = torch.arange(nB * block, device=q.device).view(nB, block, 1)  # query positions
        allowed = allowed & (index[:, None, :] <= pos)
    s = s.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhnlk,bhnkd->bhnld", s.softmax(-1).nan_to_num(0.0), vb)  # [B, H, nB, block, D]
    return rearrange(out, "b h n l d -> b h (n l) d")[:, :, :T]  # [B, H, T, D]


class SubsampledAttention(nn.Module):
    """A :class:`~attnlab.mechanisms.mha.MultiHeadAttention` that trains on locally biased key subsets.

    Paper: 53, The information pathways hypothesis (SSA).

    In training mode (or with ``sampling = True``) each forward draws a new subset per layer,
    shared by the sequences of the batch (:func:`local_key_subset`, torch's global RNG), and attends through it; otherwise it is the
    wrapped layer, full attention. The wrapped layer's parameters are the only parameters.

    Args:
        attn: the layer to wrap (kept as ``self.attn``).
        ratio: keys kept are ``⌈T / ratio⌉`` (paper: 2 to 8).
        block: queries per block that share a subset.
        locality: decay length of the sampling weight in tokens (default: ``keep``).

    Shapes:
        ``x [B, T, C] → [B, T, C]``.
    """

    def __init__(self, attn: MultiHeadAttention, *, ratio: float = 4.0, block: int = 16, locality: float | None = None):
        super().__init__()
        if not isinstance(attn, MultiHeadAttention) or attn.attention != "softmax":
            raise ValueError(f"SSA wraps softmax MultiHeadAttention layers ('mha'), got {type(attn).__name__}: build the model with 'mha'")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
            raise ValueError(f"ratio must be a number >= 1 (keys kept = ⌈T / ratio⌉; paper: 2 to 8), got ratio={ratio!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got block={block!r}")
        self.attn, self.ratio, self.block, self.locality = attn, float(ratio), block, locality
        self.sampling = False

    def forward(self, x: Tensor, mask=None) -> Tensor:
        if not (self.training or self.sampling) or mask is not None:
            return self.attn(x, mask=mask)
        self.attn.check_input(x)
        T = x.shape[1]
        keep = min(T, math.ceil(T / self.ratio))
        locality = float(keep) if self.locality is None else self.locality
        index, valid = local_key_subset(T, keep, block=self.block, locality=locality, is_causal=self.attn.is_causal)
        q, k, v = self.attn.project(x)
        out = subsampled_attention(q, k, v, index.to(x.device), valid.to(x.device), block=self.block, is_causal=self.attn.is_causal)
        return self.attn.merge(out)


def use_ssa(model: nn.Module, *, ratio: float = 4.0, block: int = 16, locality: float | None = None) -> nn.Module:
    """Wrap every block's ``mha`` attention of ``model`` (``model.layers[i].attn``) in :class:`SubsampledAttention`, in place.

    Paper: 53, The information pathways hypothesis (SSA).

    Returns:
        ``model``, whose parameter names gain ``.attn.attn.`` (the state dict of the wrapped model).
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(isinstance(b.attn, MultiHeadAttention) for b in layers):
        raise ValueError("use_ssa needs a model whose .layers[i].attn are 'mha' layers (a TinyTransformer with mechanism='mha')")
    for b in layers:
        b.attn = SubsampledAttention(b.attn, ratio=ratio, block=block, locality=locality)
    return model


@torch.no_grad()
def ensemble_predict(model: nn.Module, inputs: Tensor, *, samples: int = 4, seed: int = 0) -> Tensor:
    """SSA's ensemble inference: the mean of ``softmax(logits)`` over ``samples`` subsampled passes.

    Paper: 53, The information pathways hypothesis (SSA).

    Shapes:
        ``inputs [B, T]`` → probabilities ``[B, T, V]``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got samples={samples!r}")
    wrapped = [m for m in model.modules() if isinstance(m, SubsampledAttention)]
    if not wrapped:
        raise ValueError("the model has no SubsampledAttention layers: call use_ssa(model) first")
    was = model.training
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in wrapped:
            m.sampling = True
        return sum(model(inputs).float().softmax(-1) for _ in range(samples)) / samples
    finally:
        for m in wrapped:
            m.sampling = False
        torch.set_rng_state(state)
        model.train(was)
