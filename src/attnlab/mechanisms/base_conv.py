"""Paper 56 (Zoology): BaseConv, a gated causal convolution, as a convolution and as a recurrence.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
distil the gated convolutions (H3, Hyena, RWKV) into one layer, BaseConv:

    y = (u W + b₁) ⊙ (h ∗ u + b₂),

a linear projection multiplying a causal depthwise convolution ``(h ∗ u)_t = Σ_{0≤j<k} h_j u_{t−j}``
(one filter of ``k`` taps per channel), then an output projection. The gate is H3's
multiplicative interaction; the filter here is explicit and short (``kernel`` taps), the
long implicit filter is :mod:`attnlab.mechanisms.hyena`'s.

The parallel form sums ``k`` shifted copies of the left-padded sequence; the recurrent
form keeps the last ``k`` inputs as its state and takes one dot product per token, as a
convolution decodes. Both are O(T·k·C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms.linear import check_options

__all__ = ["BaseConv"]


@register("base_conv", paper="56", time="O(T·k·C)", memory="O(T·C)")
class BaseConv(nn.Module):
    """BaseConv: a projection gating a short causal depthwise convolution, ``(u W + b₁) ⊙ (h ∗ u + b₂)``.

    Paper: 56 (Zoology, Arora et al. 2023), the gated convolution it compares with attention on MQAR.
    Shapes: ``x [B, T, C] -> [B, T, C]``; filter ``h [C, k]``.

    Args:
        dim: model width ``C``.
        heads: accepted for the registry's ``get(name, dim=, heads=)``; the convolution is per
            channel, so it must only divide ``dim``.
        form: ``"parallel"`` (one ``conv1d``) or ``"recurrent"`` (a state of the last ``k``
            inputs); :meth:`parallel` and :meth:`recurrent` run either form directly.
        kernel: filter taps ``k``.

    Example:
        >>> m = BaseConv(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", kernel: int = 3):
        super().__init__()
        check_options(dim, heads, form, 1)
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
            raise ValueError(f"kernel must be a positive int, got kernel={kernel!r}")
        self.dim, self.heads, self.form, self.kernel = dim, heads, form, kernel
        self.proj = nn.Linear(dim, dim)  # u W + b₁
        self.filter = nn.Parameter(torch.randn(dim, kernel) / kernel**0.5)  # h: taps h_0 (current token) … h_{k−1}
        self.bias = nn.Parameter(torch.zeros(dim))  # b₂
        self.out = nn.Linear(dim, dim)
        self.block_elements = 1 << 18  # the parallel form runs tokens in blocks of about this many B·t·C values

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """``h ∗ u = Σ_j h_j ⊙ u_{t−j}``: ``k`` shifted copies of the left-padded sequence, weighted and summed, in ``[B, T, C]``.

        (A depthwise ``conv1d`` computes the same; on CPU it ran slower than the ``k`` fused
        multiply-adds and needs the ``[B, C, T]`` layout.) Every step is local in time, so the
        tokens run in blocks of about ``block_elements`` values (``B·t·C``): a block's projection,
        convolution and gate stay in cache. Unblocked, the time from 8,192 to 32,768 tokens
        (width 256) grew 6.9× (forward) and 7.5× (forward and backward) on this machine, where a
        ``[T, C]`` tensor outgrows the 32 MiB L3.
        """
        self._check(x)
        k, (B, _, C) = self.kernel, x.shape
        step = max(1, self.block_elements // (B * C))  # tokens per block
        before = x.new_zeros(B, k - 1, C)  # the k − 1 inputs before the block (zeros before the first)
        outs = []
        for xb in x.split(step, dim=1):  # split, not slicing: its backward is one cat, not a full-size zeros per block
            t = xb.shape[1]
            u = torch.cat([before, xb], dim=1)  # [B, k − 1 + t, C]
            conv = xb * self.filter[:, 0]  # [B, t, C] h_0 u_t
            for j in range(1, k):
                conv = torch.addcmul(conv, u[:, k - 1 - j : k - 1 - j + t], self.filter[:, j])  # + h_j u_{t−j}
            outs.append(self._out(xb, conv))
            before = u[:, t:]
        return torch.cat(outs, dim=1)  # [B, T, C]

    def recurrent(self, x: Tensor) -> Tensor:
        """``h ∗ u`` one token a step, the state the last ``k`` inputs (newest first)."""
        self._check(x)
        state = x.new_zeros(x.shape[0], self.dim, self.kernel)  # [B, C, k] u_t, u_{t−1}, …
        outs = []
        for x_t in x.unbind(1):  # unbind, not indexing: its backward is one stack
            state = torch.cat([x_t[..., None], state[..., :-1]], dim=-1)
            outs.append((state * self.filter).sum(-1))  # [B, C]
        return self._out(x, torch.stack(outs, dim=1))

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")

    def _out(self, x: Tensor, conv: Tensor) -> Tensor:
        return self.out(self.proj(x) * (conv + self.bias))  # [B, T, C]
