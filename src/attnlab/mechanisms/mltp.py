"""Paper 7: Multi-Layers Trainable Pooling (MLTP), from "Pooling and attention: what are effective
designs for LLM-based embedding models?".

MLTP turns the hidden states of *every* layer of a language model into one text embedding:

1. take each layer's state at the last non-padded token: ``h [B, L, C]``;
2. add a learned layer embedding: ``h + E[layer]``;
3. cross-attend from ``N`` trainable latents (queries) to those ``L`` states (keys/values),
   pre-norm, with a residual on the latents;
4. a GEGLU feed-forward (pre-norm, residual, width ``4·C``);
5. mean over the latents and L2-normalise: ``[B, C]``.

Layer choice and padding follow the paper's code (yixuantt/PoolingAndAttn,
``pooling_layers/MultiLayersTrainablePooling.py``): the states after each of the ``L``
transformer layers (not the embedding output), keys and values without bias, latents drawn
from ``N(0, 1)``. The heads here split ``C`` (head dim ``C / heads``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend
from attnlab.mechanisms import register

__all__ = ["MLTP"]


class _GEGLU(nn.Module):
    """``W_2 (a ⊙ gelu(g))`` with ``[a, g] = W_1 x``: the feed-forward of the paper's pooling block."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * mult * dim)
        self.w2 = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.w1(x).chunk(2, dim=-1)
        return self.w2(a * F.gelu(g))


@register("mltp", paper="7", layout="[B, L, T, C] -> [B, C]", time="O(N·L·C)", memory="O(N·L)")
class MLTP(nn.Module):
    """Multi-layer trainable pooling: latents cross-attend to every layer's last-token state.

    Paper: 7 (Pooling and attention: effective designs for LLM-based embedding models).
    Shapes: ``hidden [B, L, T, C]`` (or a sequence of ``L`` tensors ``[B, T, C]``, e.g. a Hugging
    Face ``hidden_states`` tuple without its first, embedding entry) and ``attention_mask
    [B, T]`` (1/True at real tokens) → ``[B, C]``, unit L2 norm. ``N`` latents, ``L`` layers.

    Args:
        dim: hidden size ``C`` of the language model.
        heads: attention heads of the pooling cross-attention.
        layers: number of layers ``L`` fed in (the size of the layer-embedding table).
        latents: number of trainable latents ``N``.
        ffn_mult: GEGLU width multiple.
        backend: attention backend for the cross-attention.

    Example:
        >>> m = MLTP(16, 2, layers=4, latents=8)
        >>> h, mask = torch.randn(3, 4, 5, 16), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [0] * 2 + [1] * 3])
        >>> m(h, mask).shape
        torch.Size([3, 16])
    """

    def __init__(self, dim: int, heads: int, *, layers: int = 32, latents: int = 768, ffn_mult: int = 4, backend: str = "auto"):
        super().__init__()
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        for name, val in (("layers", layers), ("latents", latents), ("ffn_mult", ffn_mult)):
            if val < 1:
                raise ValueError(f"{name} must be at least 1, got {name}={val}")
        self.dim, self.heads, self.layers, self.backend = dim, heads, layers, backend
        self.latents = nn.Parameter(torch.randn(latents, dim))  # [N, C]
        self.layer_emb = nn.Embedding(layers, dim)  # [L, C]
        self.norm_latents, self.norm_states, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.ffn = _GEGLU(dim, ffn_mult)
        self.site = Site(name="mltp", num_heads=heads, num_kv_heads=heads)

    def forward(self, hidden: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None) -> Tensor:
        h = self._last_token_states(hidden, attention_mask)  # [B, L, C]
        h = self.norm_states(h + self.layer_emb.weight.to(h.dtype))  # [B, L, C]
        B = h.shape[0]
        lat = self.latents.to(h.dtype).expand(B, -1, -1)  # [B, N, C]
        q = rearrange(self.q_proj(self.norm_latents(lat)), "b n (h d) -> b h n d", h=self.heads)  # [B, H, N, D]
        k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in self.kv_proj(h).chunk(2, dim=-1))  # [B, H, L, D]
        out = attend(q, k, v, backend=self.backend, site=self.site)  # [B, H, N, D]
        x = lat + self.o_proj(rearrange(out, "b h n d -> b n (h d)"))  # [B, N, C]
        x = x + self.ffn(self.norm_ffn(x))  # [B, N, C]
        return F.normalize(x.mean(dim=1), dim=-1)  # [B, C]

    def _last_token_states(self, hidden: Tensor | Sequence[Tensor], attention_mask: Tensor | None) -> Tensor:
        """Each layer's state at each sequence's last real token, ``[B, L, C]``."""
        if not isinstance(hidden, Tensor):
            hidden = torch.stack(list(hidden), dim=1)  # [B, L, T, C]
        if hidden.dim() != 4 or hidden.shape[1] != self.layers or hidden.shape[3] != self.dim:
            raise ValueError(f"hidden must be [B, L, T, C] with L={self.layers}, C={self.dim}, got shape {tuple(hidden.shape)}")
        B, L, T, C = hidden.shape
        if attention_mask is None:
            return hidden[:, :, -1]  # [B, L, C]
        if attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask must be [B, T] = [{B}, {T}], got shape {tuple(attention_mask.shape)}")
        pos = torch.arange(T, device=hidden.device)
        last = torch.where(attention_mask.bool(), pos, -1).amax(dim=1)  # [B]
        if bool((last < 0).any()):
            raise ValueError(
                f"every sequence needs a real token, but attention_mask rows {(last < 0).nonzero().flatten().tolist()} are all padding"
            )
        idx = last.view(B, 1, 1, 1).expand(B, L, 1, C)  # [B, L, 1, C]
        return hidden.gather(2, idx).squeeze(2)  # [B, L, C]
