"""Paper 38 (DSF): a gated linear RNN, ``h_t = Λ_t h_{t−1} + B_t u_t``, scanned token by token or in chunks.

Sieber et al. 2024, "Understanding the differences in Foundation Models: Attention, State Space
Models, and Recurrent Neural Networks", write every sequence mixer as the linear time-varying
system of the Dynamical Systems Framework (DSF):

    h_t = Λ_t h_{t−1} + B_t u_t,        y_t = C_t h_t.

Their RNN example is the RG-LRU of Griffin/Hawk (De et al. 2024), a diagonal recurrence whose
decay is chosen by the input:

    r_t = σ(W_r u_t),  i_t = σ(W_i u_t),  Λ_t = a^{c·r_t}  (a = σ(λ) per channel, c = 8),
    B_t u_t = sqrt(1 − Λ_t²) ⊙ (i_t ⊙ W_u u_t),          y_t = W_o h_t   (C_t = I).

``Λ_t = 1`` with no input gate is a cumulative sum, and a constant ``Λ`` is an LTI filter.

:func:`diagonal_scan` computes ``h_t = λ_t ⊙ h_{t−1} + b_t`` for any diagonal recurrence (the
SSM of :mod:`attnlab.mechanisms.selective_ssm` has a scalar one). Its chunked form runs the
``c`` steps of every chunk at once over all chunks (a local scan from zero, with the running
product of ``λ``), then carries the state across the ``T/c`` chunk boundaries:

    h_t = local_t + (Π_{r≤t in chunk} λ_r) ⊙ h_{start of chunk}.

Products of ``λ ∈ [0, 1]`` never overflow, so it is exact and stable; c + T/c Python steps,
O(T·C) work and memory. ``chunk=1`` and :func:`diagonal_scan_recurrent` are the token-by-token loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms.linear import _check_chunk, check_options

__all__ = ["LinearRNN", "diagonal_scan", "diagonal_scan_recurrent"]


def diagonal_scan_recurrent(lam: Tensor, b: Tensor) -> Tensor:
    """``h_t = λ_t ⊙ h_{t−1} + b_t`` from ``h_0 = 0``, one token a step (the reference).

    Shapes: ``lam, b [B, T, *S]`` -> ``h [B, T, *S]``.
    """
    h, out = torch.zeros_like(b[:, 0]), []
    for lam_t, b_t in zip(lam.unbind(1), b.unbind(1)):  # unbind, not indexing: its backward is one stack, not T full-size zeros
        h = lam_t * h + b_t
        out.append(h)
    return torch.stack(out, dim=1)


def diagonal_scan(lam: Tensor, b: Tensor, chunk: int = 64) -> Tensor:
    """``h_t = λ_t ⊙ h_{t−1} + b_t`` from ``h_0 = 0``, ``chunk`` tokens of every chunk at once.

    Shapes: ``lam, b [B, T, *S]`` -> ``h [B, T, *S]``.

    Example:
        >>> diagonal_scan(torch.ones(1, 4), torch.ones(1, 4), chunk=2)
        tensor([[1., 2., 3., 4.]])
    """
    if lam.shape != b.shape:
        raise ValueError(f"lam and b must have one shape [B, T, ...], got lam={tuple(lam.shape)}, b={tuple(b.shape)}")
    _check_chunk(chunk)
    B, T, *S = b.shape
    c = min(chunk, max(T, 1))
    pad = -T % c
    if pad:  # λ = 1, b = 0 past the end: padded steps change nothing before it
        lam = torch.cat([lam, lam.new_ones(B, pad, *S)], dim=1)
        b = torch.cat([b, b.new_zeros(B, pad, *S)], dim=1)
    lam, b = lam.view(B, -1, c, *S), b.view(B, -1, c, *S)  # [B, N, c, *S]
    h, p = torch.zeros_like(b[:, :, 0]), torch.ones_like(b[:, :, 0])  # [B, N, *S]
    local, decay = [], []
    for lam_i, b_i in zip(lam.unbind(2), b.unbind(2)):  # every chunk's local scan from zero, all chunks at once
        h, p = lam_i * h + b_i, p * lam_i
        local.append(h)
        decay.append(p)
    local, decay = torch.stack(local, dim=2), torch.stack(decay, dim=2)  # [B, N, c, *S]
    carry, starts = torch.zeros_like(b[:, 0, 0]), []
    for decay_n, local_n in zip(decay[:, :, -1].unbind(1), local[:, :, -1].unbind(1)):  # the state entering each chunk
        starts.append(carry)
        carry = decay_n * carry + local_n
    h = local + decay * torch.stack(starts, dim=1)[:, :, None]  # [B, N, c, *S]
    return h.reshape(B, -1, *S)[:, :T]


@register(
    "linear_rnn",
    paper="38",
    time="O(T·C)",
    memory="O(T·C)",
)
class LinearRNN(nn.Module):
    """A gated diagonal linear RNN (RG-LRU) in DSF form ``h_t = Λ_t h_{t−1} + B_t u_t``, scanned recurrently or in chunks.

    Paper: 38 (DSF, Sieber et al. 2024), the RNN case of ``h_t = Λ_t h_{t−1} + B_t u_t, y_t = C_t h_t``.
    Shapes: ``x [B, T, C] -> [B, T, C]``; the state ``h_t`` is ``[B, C]`` (diagonal ``Λ_t``).

    Args:
        dim: model width ``C`` (and state size).
        heads: accepted for the registry's ``get(name, dim=, heads=)``; the recurrence is per
            channel, so it must only divide ``dim``.
        form: ``"parallel"`` (the chunked scan) or ``"recurrent"`` (token by token);
            :meth:`parallel` and :meth:`recurrent` run either form directly.
        chunk: tokens per chunk of the parallel form.
        c: the RG-LRU's decay sharpness ``Λ_t = a^{c·r_t}``.

    Example:
        >>> m = LinearRNN(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", chunk: int = 64, c: float = 8.0):
        super().__init__()
        check_options(dim, heads, form, chunk)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0:
            raise ValueError(f"c must be a positive number (Griffin uses 8), got c={c!r}")
        self.dim, self.heads, self.form, self.chunk, self.c = dim, heads, form, chunk, float(c)
        self.inp = nn.Linear(dim, 3 * dim)  # W_u, W_r, W_i
        a = torch.empty(dim).uniform_(0.9, 0.999) ** (1 / self.c)  # Griffin's init: a^c uniform in [0.9, 0.999]
        self.lam = nn.Parameter(torch.logit(a))  # a = σ(λ)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """The chunked scan: ``chunk`` steps of every chunk at once, then the carries between chunks."""
        lam, bu = self.system(x)
        return self.out(diagonal_scan(lam, bu, self.chunk))  # [B, T, C]

    def recurrent(self, x: Tensor) -> Tensor:
        """The DSF recurrence ``h_t = Λ_t h_{t−1} + B_t u_t`` one token a step."""
        lam, bu = self.system(x)
        return self.out(diagonal_scan_recurrent(lam, bu))  # [B, T, C]

    def system(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The DSF terms ``Λ_t`` (the diagonal) and ``B_t u_t``, both ``[B, T, C]``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        u, r, i = self.inp(x).chunk(3, dim=-1)  # [B, T, C] each
        log_lam = self.c * torch.sigmoid(r) * F.logsigmoid(self.lam)  # log a^{c·r_t} ≤ 0
        lam = torch.exp(log_lam)
        bu = torch.sqrt(-torch.expm1(2 * log_lam)) * torch.sigmoid(i) * u  # sqrt(1 − Λ²) keeps the state's scale
        return lam, bu
