"""Paper 56: Hyena, gated long implicit convolutions computed by FFT (the long-filter mixer Zoology compares).

Poli et al. 2023, "Hyena Hierarchy", replace attention by an order-``N`` recurrence of
element-wise gates and long causal convolutions whose filters are as long as the input:

    z¹ = v,        z^{n+1}_t = x^n_t ⊙ (h^n ∗ z^n)_t,        y = W_o z^{N+1},

with ``v, x¹ … x^N`` projections of the input, each through a short causal depthwise
convolution (3 taps). The filters are implicit: ``h^n_t = MLP(pos(t)) ⊙ exp(−α t)``, a small
FFN with sine activations over a positional encoding of ``t`` (``t/L`` and ``bands`` sines
and cosines), times a per-channel exponential decay window, plus a skip ``D ⊙ z``. Zoology
(Arora et al. 2023) uses Hyena as the long-convolution mixer it compares with attention on MQAR.

``form="fft"`` computes each ``h ∗ z`` in O(T log T) by FFT over ``2T`` points (no wrap-around);
``form="direct"`` sums ``Σ_{s≤t} h_{t−s} z_s`` as a depthwise ``conv1d`` with a ``T``-tap filter,
O(T²·C): the reference. Hyena has no recurrent form with a fixed state.

Every step after the input projection is per channel, so the forward runs in blocks of channels
(``block_elements`` ≈ B·T·k values per tensor, 4 MiB in float32): a block's projections, short
convolutions, FFTs and gates stay in cache. At width 256 on this machine (one thread), the time from
T = 8,192 to 32,768 grew 7.6× (forward) and 7.9× (forward and backward) unblocked, where
``[B, 3C, T]`` tensors outgrow the 32 MiB L3, and 4.6× and 4.7× in blocks (FFTs over 2T points
alone grow 4 · 16/14 = 4.57×).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["Hyena", "causal_conv_direct", "causal_conv_fft"]

FORMS = ("fft", "direct")


def causal_conv_fft(z: Tensor, h: Tensor) -> Tensor:
    """``(h ∗ z)_t = Σ_{s≤t} h_{t−s} z_s`` by FFT over ``2T`` points, O(T log T).

    Shapes: ``z [B, C, T]``, ``h [C, T]`` -> ``[B, C, T]``.
    """
    T = z.shape[-1]
    n = 2 * T
    return torch.fft.irfft(torch.fft.rfft(z, n=n) * torch.fft.rfft(h, n=n), n=n)[..., :T]


def causal_conv_direct(z: Tensor, h: Tensor) -> Tensor:
    """``(h ∗ z)_t = Σ_{s≤t} h_{t−s} z_s`` as a depthwise ``conv1d``, O(T²) (the reference).

    Shapes: ``z [B, C, T]``, ``h [C, T]`` -> ``[B, C, T]``.
    """
    T = z.shape[-1]
    return F.conv1d(F.pad(z, (T - 1, 0)), h.flip(-1)[:, None], groups=z.shape[1])


class ImplicitFilter(nn.Module):
    """``h_t = MLP(pos(t)) ⊙ exp(−α t / L)``: the ``[C, T]`` filter for any ``T``, from ``2·bands + 1`` position features.

    Args:
        dim: channels ``C``.
        width: hidden width of the MLP.
        bands: sine/cosine frequencies of the positional encoding.
        max_len: ``L``, the length that scales positions and decay (``t/L`` is 1 at ``t = L``).
    """

    def __init__(self, dim: int, *, width: int = 32, bands: int = 8, max_len: int = 8192):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("freqs", torch.arange(1, bands + 1, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * bands + 1, width), _Sin(width), nn.Linear(width, width), _Sin(width), nn.Linear(width, dim))
        target = math.log(1e-2)  # Hyena's ExponentialModulation: decay to 1e-2 between 30% and 150% of L
        self.register_buffer("alpha", torch.linspace(-target / 0.3, -target / 1.5, dim), persistent=False)

    def forward(self, T: int, dtype: torch.dtype) -> Tensor:
        t = torch.arange(T, device=self.alpha.device, dtype=dtype)[:, None] / self.max_len  # [T, 1]
        angle = 2 * math.pi * t * self.freqs.to(dtype)  # [T, bands]
        pos = torch.cat([t, angle.sin(), angle.cos()], dim=-1)  # [T, 2·bands + 1]
        return (self.mlp(pos) * torch.exp(-self.alpha.to(dtype) * t)).T  # [C, T]


class _Sin(nn.Module):
    """Hyena's filter activation ``sin(ω ⊙ x)`` with a learned frequency per unit (ω = 1 at init)."""

    def __init__(self, width: int):
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


@register("hyena", paper="56", time="O(T·log T·C)", memory="O(T·C)")
class Hyena(nn.Module):
    """Hyena operator: gates and long implicit causal convolutions ``z^{n+1} = x^n ⊙ (h^n ∗ z^n)``, by FFT.

    Paper: 56 (Zoology, Arora et al. 2023), the long-convolution mixer it compares with attention
    (Hyena: Poli et al. 2023).
    Shapes: ``x [B, T, C] -> [B, T, C]``; filters ``h^n [C, T]``.

    Args:
        dim: model width ``C``.
        heads: accepted for the registry's ``get(name, dim=, heads=)``; the filters are per
            channel, so it must only divide ``dim``.
        form: ``"fft"`` (O(T log T)) or ``"direct"`` (O(T²) convolution, the reference).
        order: ``N``, the number of gate-and-convolve steps.
        max_len: the filters' position scale ``L`` (any length runs; decays are set relative to ``L``).

    Example:
        >>> m = Hyena(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "fft", order: int = 2, max_len: int = 8192):
        super().__init__()
        positive_ints(dim=dim, heads=heads, order=order, max_len=max_len)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got form={form!r}")
        self.dim, self.heads, self.form, self.order = dim, heads, form, order
        self.inp = nn.Linear(dim, (order + 1) * dim)  # v, x¹ … x^N
        self.short = nn.Conv1d((order + 1) * dim, (order + 1) * dim, 3, groups=(order + 1) * dim)  # causal by left padding
        self.filters = nn.ModuleList(ImplicitFilter(dim, max_len=max_len) for _ in range(order))
        self.skip = nn.Parameter(torch.randn(order, dim))  # D ⊙ z, Hyena's filter bias
        self.out = nn.Linear(dim, dim)
        self.block_elements = 1 << 20  # channels run in blocks of about this many B·T·k elements

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        B, T, C = x.shape
        N = self.order
        conv = causal_conv_fft if self.form == "fft" else causal_conv_direct
        step = max(1, min(C, self.block_elements // (B * T)))  # channels per block
        filters = zip(*(f(T, x.dtype).split(step) for f in self.filters))  # per block, N × [k, T]; split: one cat in backward
        w_in = self.inp.weight.view(N + 1, C, C)  # rows of v, x¹ … x^N
        b_in = self.inp.bias.view(N + 1, C)
        w_short = self.short.weight.view(N + 1, C, 1, 3)
        b_short = self.short.bias.view(N + 1, C)
        zs = []
        for c0, hs in zip(range(0, C, step), filters):  # every step after the input projection is per channel
            c = slice(c0, c0 + step)
            k = hs[0].shape[0]
            u = F.linear(x, w_in[:, c].reshape(-1, C), b_in[:, c].reshape(-1)).transpose(1, 2)  # [B, (N + 1)·k, T]
            u = F.conv1d(F.pad(u, (2, 0)), w_short[:, c].reshape(-1, 1, 3), b_short[:, c].reshape(-1), groups=(N + 1) * k)
            z, *gates = u.chunk(N + 1, dim=1)  # v and x¹ … x^N, [B, k, T] each
            for n, gate in enumerate(gates):
                z = gate * (conv(z, hs[n]) + self.skip[n, c, None] * z)  # [B, k, T]
            zs.append(z)
        return self.out(torch.cat(zs, dim=1).transpose(1, 2))  # [B, T, C]
