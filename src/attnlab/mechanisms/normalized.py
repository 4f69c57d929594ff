"""Paper 38 (DSF): normalised attention, as a matrix and as a recurrence.

Sieber et al. 2024, "Understanding the differences in Foundation Models: Attention, State Space
Models, and Recurrent Neural Networks", propose normalised attention: causal attention with
raw dot products ``q_t·k_s`` divided by a learned, input-dependent normaliser instead of a
softmax sum,

    y_t = Σ_{s≤t} (q_t·k_s) v_s / exp(n_t),        n_t = W_n u_t + b_n   (one scalar per head).

The normaliser is the paper's code (``IntelligentControlSystems/dsf-mqar``, ``MHNA``):
``n = Linear(d_model, num_heads)(u)``, ``exp`` of it divides the causal score matrix row by row,
and ``q·k`` is not scaled by ``1/sqrt(D)``.

In the Dynamical Systems Framework ``h_t = Λ_t h_{t−1} + B_t u_t``, ``y_t = C_t h_t`` this is

    Λ_t = exp(n_{t−1} − n_t) I,    B_t u_t = exp(−n_t) k_t v_tᵀ,    C_t = q_tᵀ,

so ``h_t = Σ_{s≤t} k_s v_sᵀ / exp(n_t)``: a time-varying, input-selected decay like an SSM's,
which linear attention (``Λ_t = I``) lacks. The parallel form builds the causal ``T×T`` matrix
(O(T²·D)); the recurrent form carries the ``[D, D]`` state per head, ``chunk`` tokens a step as
in :mod:`attnlab.mechanisms.linear` (O(T·c·D + T·D²)). This is not softmax attention, so it is
plain PyTorch and has no attention site.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.mechanisms import register
from attnlab.mechanisms.linear import causal_linear, check_options

__all__ = ["NormalizedAttention"]


@register(
    "normalized",
    paper="38",
    time="O(T²·D) parallel, O(T·c·D + T·D²) recurrent",
    memory="O(T²) parallel, O(T·D²/c) recurrent (chunk states)",
)
class NormalizedAttention(nn.Module):
    """DSF normalised attention ``y_t = Σ_{s≤t} (q_t·k_s) v_s / exp(n_t)``, in parallel or recurrent form.

    Paper: 38 (DSF, Sieber et al. 2024), normalised attention with the learned normaliser ``n_t = W_n u_t``.
    Shapes: ``x [B, T, C] -> [B, T, C]``; per head ``D = C / heads``; ``n`` is ``[B, H, T]``.

    Args:
        dim: model width ``C``.
        heads: number of heads; each has its own normaliser ``n_t``.
        form: ``"parallel"`` (the masked ``T×T`` matrix) or ``"recurrent"`` (the DSF state);
            :meth:`parallel` and :meth:`recurrent` run either form directly.
        chunk: tokens per step of the recurrent form (1: token by token).

    Example:
        >>> m = NormalizedAttention(dim=16, heads=2)
        >>> m(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int, *, form: str = "parallel", chunk: int = 64):
        super().__init__()
        check_options(dim, heads, form, chunk)
        self.dim, self.heads, self.form, self.chunk = dim, heads, form, chunk
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.Linear(dim, heads)  # n_t = W_n u_t + b_n, one scalar per head
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.parallel(x) if self.form == "parallel" else self.recurrent(x)

    def parallel(self, x: Tensor) -> Tensor:
        """The parallel form: ``y = diag(exp(−n)) tril(Q Kᵀ) V``, O(T²·D)."""
        q, k, v, n = self._qkvn(x)
        a = torch.matmul(q, k.transpose(-1, -2)).tril() * torch.exp(-n)[..., None]  # [B, H, T, T]
        return self._out(torch.matmul(a, v), x)  # [B, H, T, D]

    def recurrent(self, x: Tensor) -> Tensor:
        """The recurrent (DSF) form ``h_t = exp(n_{t−1} − n_t) h_{t−1} + exp(−n_t) k_t v_tᵀ``, ``y_t = q_tᵀ h_t``,
        run ``chunk`` tokens a step on the unscaled state ``S_t = exp(n_t) h_t = S_{t−1} + k_t v_tᵀ``."""
        q, k, v, n = self._qkvn(x)
        return self._out(causal_linear(q, k, v, self.chunk) * torch.exp(-n)[..., None], x)  # [B, H, T, D]

    def _qkvn(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q, k, v`` ``[B, H, T, D]`` and ``n`` ``[B, H, T]``, in float32 (float64 for float64 input)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads).to(dt)
        n = rearrange(self.norm(x), "b t h -> b h t").to(dt)  # [B, H, T]
        return q, k, v, n

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        return self.proj(rearrange(y.to(x.dtype), "b h t d -> b t (h d)"))  # [B, T, C]
