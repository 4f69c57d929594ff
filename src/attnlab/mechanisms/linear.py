"""Paper 38 (DSF): causal linear attention, as a matrix and as a recurrence.

Sieber et al. 2024, "Understanding the differences in Foundation Models: Attention, State Space
Models, and Recurrent Neural Networks", write every sequence mixer as a linear time-varying
system, the Dynamical Systems Framework (DSF):

    h_t = Λ_t h_{t−1} + B_t u_t,        y_t = C_t h_t.

Linear attention (Katharopoulos et al.) with the feature map ``φ(x) = elu(x) + 1`` (the map in
the paper's code, ``IntelligentControlSystems/dsf-mqar``) is the case ``Λ_t = I``,
``B_t u_t = φ(k_t) v_tᵀ`` (a ``[D, Dv]`` state per head) and ``C_t = φ(q_t)ᵀ / η_t`` with the
normaliser ``η_t = φ(q_t)ᵀ Σ_{s≤t} φ(k_s)``:

    y_t = Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s / Σ_{s≤t} φ(q_t)·φ(k_s).

The normaliser rides along in the state: values get an extra column of ones, so the last
column of ``h_t`` is ``Σ_{s≤t} φ(k_s)`` and one product gives numerator and denominator.

The parallel form builds the causal ``T×T`` matrix (O(T²·D)); the recurrent form carries the
state. It runs the recurrence a chunk of ``c`` tokens at a time: the states at chunk boundaries
are a cumulative sum of ``K_nᵀ V_n`` (``h`` after chunk ``n``), and inside a chunk the parallel
form adds what the chunk's own earlier tokens contribute:

    Y_n = Q_n h_{n−1} + tril(Q_n K_nᵀ) V_n,        h_n = h_{n−1} + K_nᵀ V_n.

That is O(T·c·D + T·D²) time and O(T·D²/c) memory for the boundary states; ``chunk=1`` is the
token-by-token recurrence. Both forms give the same output. This is not softmax attention, so
it is plain PyTorch and has no attention site.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["LinearAttention", "causal_linear"]

FORMS = ("parallel", "recurrent")


def check_options(dim: int, heads: int, form: str, chunk: int) -> None:
    """The options the DSF mechanisms share (linear here, and normalized)."""
    positive_ints(dim=dim, heads=heads)
    if dim % heads:
        raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got form={form!r}")
    _check_chunk(chunk)


def _check_chunk(chunk: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got chunk={chunk!r}")


def causal_linear(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> Tensor:
    """``y_t = Σ_{s≤t} (q_t·k_s) v_s`` by the chunked recurrence, O(T·chunk·D + T·D·Dv).

    Shapes: ``q, k [B, H, T, D]``, ``v [B, H, T, Dv]`` -> ``[B, H, T, Dv]``.
    """
    _check_chunk(chunk)
    T = q.shape[2]
    c = min(chunk, max(T, 1))
    pad = -T % c
    if pad:  # zero keys and values add nothing; the padded queries' outputs are dropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (rearrange(t, "b h (n c) d -> b h n c d", c=c) for t in (q, k, v))
    kv = torch.matmul(k.transpose(-1, -2), v)  # [B, H, N, D, Dv] each chunk's K_nᵀ V_n
    h = torch.cumsum(kv, dim=2)  # h_n, the state after chunk n
    h = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)  # h_{n−1}: the state each chunk starts from
    a = torch.matmul(q, k.transpose(-1, -2)).tril()  # [B, H, N, c, c] causal inside the chunk
    y = torch.matmul(q, h) + torch.matmul(a, v)  # [B, H, N, c, Dv]
    return rearrange(y, "b h n c d -> b h (n c) d")[:, :, :T]


@register(
    "linear",
    paper="38",
    time="O(T²·D) parallel, O(T·c·D + T·D²) recurrent",
    memory="O(T²) parallel, O(T·D²/c) recurrent (chunk states)",
)
class LinearAttention(nn.Module):
    """Causal linear attention ``φ(q)·φ(k)`` with ``φ = elu + 1``, in parallel or recurrent form.

    Paper: 38 (DSF, Sieber et al. 2024), linear attention as ``h_t = h_{t−1} + φ(k_t) v_tᵀ``.
    Shapes: ``x [B, T, C] -> [B, T, C]``; per head ``D = C / heads``.

    Args:
        dim: model width ``C``.
        heads: number of heads.
        form: ``"parallel"`` (the masked ``T×T`` matrix) or ``"recurrent"`` (the DSF state);
            :meth:`parallel` and :meth:`recurrent` run either form directly.
        normalize: divide by ``η_t = φ(q_t)ᵀ Σ_{s≤t} φ(k_s)`` (the paper's linear attention);
            False gives the unnormalised sum ``Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s``.
        chunk: tokens per step of the recurrent form (1: token by token).

    Example:
        >>> m = LinearAttention(dim=16, heads=2, form="recurrent")
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", normalize: bool = True, chunk: int = 64):
        super().__init__()
        check_options(dim, heads, form, chunk)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got normalize={normalize!r}")
        self.dim, self.heads, self.form, self.normalize, self.chunk = dim, heads, form, normalize, chunk
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """The parallel form: ``y = (tril(φ(Q) φ(K)ᵀ) V) / η``, O(T²·D)."""
        q, k, v = self._features(x)
        a = torch.matmul(q, k.transpose(-1, -2)).tril()  # [B, H, T, T] causal φ(q_t)·φ(k_s)
        return self._out(torch.matmul(a, v), x)  # [B, H, T, Dv(+1)]

    def recurrent(self, x: Tensor) -> Tensor:
        """The recurrent (DSF) form: ``h_t = h_{t−1} + φ(k_t) v_tᵀ``, ``y_t = φ(q_t)ᵀ h_t``, ``chunk`` tokens a step."""
        q, k, v = self._features(x)
        return self._out(causal_linear(q, k, v, self.chunk), x)  # [B, H, T, Dv(+1)]

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``φ(q), φ(k)`` ``[B, H, T, D]`` and ``v`` ``[B, H, T, D(+1)]``, in float32 (float64 for float64 input)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads).to(dt)
        q, k = F.elu(q) + 1, F.elu(k) + 1  # φ > 0, so η_t > 0
        if self.normalize:
            v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, H, T, D + 1], last column builds η_t
        return q, k, v

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        if self.normalize:
            y = y[..., :-1] / y[..., -1:]  # [B, H, T, D] divided by η_t
        return self.proj(rearrange(y.to(x.dtype), "b h t d -> b t (h d)"))  # [B, T, C]
