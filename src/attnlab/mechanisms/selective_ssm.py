"""Papers 38, 56: a selective state-space layer (Mamba-style), scanned token by token or in chunks.

Mamba (Gu & Dao 2023) makes an SSM's matrices functions of the input ("selection"); DSF (Sieber
et al. 2024) writes it as ``h_t = Λ_t h_{t−1} + B_t u_t, y_t = C_t h_t`` with
``Λ_t = exp(Δ_t A)``; Zoology (Arora et al. 2023) compares it with attention on MQAR. This layer
is the Mamba-2 form (Dao & Gu 2024): per head a scalar ``A < 0`` and step ``Δ_t``, input-chosen
``B_t, C_t ∈ R^N`` shared by the heads, and a ``[P, N]`` state per head (``P`` channels):

    h_t = exp(Δ_t A) h_{t−1} + Δ_t x_t B_tᵀ,        y_t = h_t C_t + D x_t,

inside Mamba's block: ``x, B, C`` from a projection and a short causal depthwise convolution
with SiLU, the output gated by ``silu(z)``, then projected. (Mamba-2's group norm before the
output projection is left out.) With ``A = 0`` (``Λ = 1``), ``Δ = 1``, ``B = C = 1`` and no
``D``, :func:`ssd` is a cumulative sum of ``x``.

The chunked form (:func:`ssd`, Mamba-2's "state space duality") computes each chunk of ``c``
tokens as masked attention ``(L ∘ C Bᵀ)(Δx)`` with the decay matrix ``L_{tr} =
exp(Σ_{r<m≤t} Δ_m A)``, and carries the ``[P, N]`` states across chunk boundaries: matmuls,
O(T·c·(N + P)) work. :func:`ssd_recurrent` is the token-by-token scan.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints
from attnlab.mechanisms.linear import _check_chunk, check_options

__all__ = ["SelectiveSSM", "ssd", "ssd_recurrent", "ssd_state"]


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``h_t = exp(Δ_t A) h_{t−1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t``, one token a step (the reference).

    Shapes: ``x [B, T, H, P]``, ``dt [B, T, H]``, ``A [H]``, ``B, C [B, T, N]`` -> ``y [B, T, H, P]``.
    """
    h = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])  # [B, H, P, N]
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):  # unbind: one stack in backward
        lam = torch.exp(dt_t * A)[..., None, None]  # [B, H, 1, 1]
        h = lam * h + (dt_t[..., None] * x_t)[..., None] * B_t[:, None, None]  # [B, H, P, N]
        ys.append(torch.einsum("bhpn,bn->bhp", h, C_t))
    return torch.stack(ys, dim=1)


def _segsum(a: Tensor) -> Tensor:
    """``S[..., t, r] = Σ_{r<m≤t} a_m`` for ``r ≤ t``, ``-inf`` above the diagonal; summed, not differenced, so exact.

    Shapes: ``a [..., c]`` -> ``[..., c, c]``.
    """
    c = a.shape[-1]
    ones = torch.ones(c, c, dtype=torch.bool, device=a.device)
    s = torch.cumsum(a[..., :, None].expand(*a.shape, c).masked_fill(~ones.tril(-1), 0), dim=-2)  # [..., c(t), c(r)] a_m where m > r
    return s.masked_fill(~ones.tril(), -math.inf)


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int = 64) -> Tensor:
    """The selective scan in chunks: attention-like inside each chunk, the states carried between chunks.

    Shapes: ``x [B, T, H, P]``, ``dt [B, T, H]``, ``A [H]``, ``B, C [B, T, N]`` -> ``y [B, T, H, P]``.

    Example:
        >>> x = torch.ones(1, 4, 1, 1)
        >>> ssd(x, torch.ones(1, 4, 1), torch.zeros(1), torch.ones(1, 4, 1), torch.ones(1, 4, 1), chunk=2).flatten()
        tensor([1., 2., 3., 4.])
    """
    return ssd_state(x, dt, A, B, C, chunk)[0]


def ssd_state(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`ssd` entered with ``state`` (``h_0``, zeros when None); its outputs and the state after the last token.

    Scanning a sequence in pieces, each entered with the state the one before left, gives the
    outputs of one scan over all of it.

    Shapes: as :func:`ssd`; ``state [B, H, P, N]`` in and out.
    """
    _check_chunk(chunk)
    T = x.shape[1]
    c = min(chunk, max(T, 1))
    pad = -T % c
    if pad:  # Δ = 0 past the end: no decay and no input, so the padded steps change nothing, the final state included
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    x = rearrange(x * dt[..., None], "b (n c) h p -> b h n c p", c=c)  # Δ_t x_t
    B, C = (rearrange(t, "b (n c) s -> b n c s", c=c) for t in (B, C))  # [B, N, c, N_state]
    a = rearrange(dt * A, "b (n c) h -> b h n c", c=c)  # log Λ_t ≤ 0
    L = torch.exp(_segsum(a))  # [B, H, N, c, c] decay from token r to token t of a chunk
    scores = torch.einsum("bnts,bnrs->bntr", C, B)  # [B, N, c, c] C_t·B_r
    y = torch.matmul(L * scores[:, None], x)  # [B, H, N, c, P] the chunk's own tokens
    states = torch.einsum("bhnr,bhnrp,bnrs->bhnps", L[..., -1, :], x, B)  # [B, H, N, P, N_state] each chunk's input, at its end
    cum = torch.cumsum(a, dim=-1)  # [B, H, N, c] log of the decay from the chunk's start through token t
    carry = torch.zeros_like(states[:, :, 0]) if state is None else state
    starts = []
    for decay_n, states_n in zip(torch.exp(cum[..., -1]).unbind(2), states.unbind(2)):  # the state entering each chunk
        starts.append(carry)
        carry = decay_n[..., None, None] * carry + states_n
    h0 = torch.stack(starts, dim=2)  # [B, H, N, P, N_state]
    y = y + torch.einsum("bnts,bhnps->bhntp", C, h0) * torch.exp(cum)[..., None]  # the state from earlier chunks
    return rearrange(y, "b h n c p -> b (n c) h p")[:, :T], carry


@register(
    "selective_ssm",
    paper="38, 56",
    time="O(T·c·(N + P)·H)",
    memory="O(T·c·H + T·C)",
)
class SelectiveSSM(nn.Module):
    """A selective SSM block (Mamba-2 form) ``h_t = exp(Δ_t A) h_{t−1} + Δ_t x_t B_tᵀ``, chunked or token by token.

    Paper: 38 (DSF: ``Λ_t = exp(Δ_t A)``), 56 (Zoology: SSMs vs attention on MQAR).
    Shapes: ``x [B, T, C] -> [B, T, C]``; inner width ``E = expand·C`` in ``heads`` heads of
    ``P = E / heads`` channels; a ``[P, state]`` state per head.

    Args:
        dim: model width ``C``.
        heads: SSM heads (each its own ``A`` and ``Δ``).
        form: ``"parallel"`` (chunked, :func:`ssd`) or ``"recurrent"`` (token by token);
            :meth:`parallel` and :meth:`recurrent` run either form directly.
        chunk: tokens per chunk of the parallel form.
        state: ``N``, the size of ``B_t`` and ``C_t``.
        expand: inner width over model width.
        kernel: width of the short causal convolution on ``x, B, C``.

    Example:
        >>> m = SelectiveSSM(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", chunk: int = 64, state: int = 16, expand: int = 2, kernel: int = 4):
        super().__init__()
        check_options(dim, heads, form, chunk)
        positive_ints(state=state, expand=expand, kernel=kernel)
        self.dim, self.heads, self.form, self.chunk, self.state, self.kernel = dim, heads, form, chunk, state, kernel
        self.inner = E = expand * dim
        self.inp = nn.Linear(dim, 2 * E + 2 * state + heads)  # z, x, B, C, Δ
        self.conv = nn.Conv1d(E + 2 * state, E + 2 * state, kernel, groups=E + 2 * state)  # depthwise, made causal by left padding
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)))  # Mamba's Δ init range
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(Δ)
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))  # A = −exp(A_log)
        self.D = nn.Parameter(torch.ones(heads))
        self.out = nn.Linear(E, dim)
        self.block_elements = 1 << 20  # the parallel form runs whole chunks in blocks of about this many B·t·(2E + 2N + H) values

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """The chunked form (:func:`ssd`), in blocks of whole chunks, each entered with the state and
        convolution inputs the block before left.

        Every step but the scan is local in time, so blocks of about ``block_elements`` values
        (``B·t·(2E + 2N + H)``) keep a block's projections, convolution, decays and gates in
        cache whatever ``T``. Unblocked, the forward and backward from 8,192 to 32,768 tokens
        (width 256) grew 5.4× on this machine, as ``[T, E]`` tensors outgrew the 32 MiB L3.
        """
        self._check(x)
        width = 2 * self.inner + 2 * self.state + self.heads
        step = self.chunk * max(1, self.block_elements // (x.shape[0] * width * self.chunk))  # tokens per block
        before, state, outs = None, None, []
        for xb in x.split(step, dim=1):  # split, not slicing: its backward is one cat, not a full-size zeros per block
            z, u, dt, A, B, C, before = self._inputs(xb, before)
            y, state = ssd_state(u, dt, A, B, C, self.chunk, state)
            outs.append(self._out(y, u, z))
        return torch.cat(outs, dim=1)  # [B, T, C]

    def recurrent(self, x: Tensor) -> Tensor:
        """The token-by-token scan (:func:`ssd_recurrent`)."""
        self._check(x)
        z, u, dt, A, B, C, _ = self._inputs(x)
        return self._out(ssd_recurrent(u, dt, A, B, C), u, z)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")

    def _inputs(self, x: Tensor, before: Tensor | None = None):
        """``z, u, Δ, A, B, C`` of the tokens ``x``, and the last ``kernel − 1`` convolution inputs (``before``
        the next tokens; zeros before the first)."""
        E, N = self.inner, self.state
        z, xbc, dt = self.inp(x).split([E, E + 2 * N, self.heads], dim=-1)
        if before is None:
            before = xbc.new_zeros(x.shape[0], self.kernel - 1, E + 2 * N)
        xbc = torch.cat([before, xbc], dim=1)  # [B, kernel − 1 + t, E + 2N]
        conv = self.conv(xbc.transpose(1, 2)).transpose(1, 2)  # [B, t, E + 2N] causal
        u, B, C = F.silu(conv).split([E, N, N], dim=-1)
        u = rearrange(u, "b t (h p) -> b t h p", h=self.heads)  # [B, T, H, P]
        dt = F.softplus(dt + self.dt_bias)  # [B, T, H]
        return z, u, dt, -torch.exp(self.A_log), B, C, xbc[:, x.shape[1] :]

    def _out(self, y: Tensor, u: Tensor, z: Tensor) -> Tensor:
        y = y + self.D[:, None] * u  # [B, T, H, P]
        return self.out(rearrange(y, "b t h p -> b t (h p)") * F.silu(z))  # [B, T, C]
