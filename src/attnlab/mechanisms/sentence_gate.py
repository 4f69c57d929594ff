"""Paper 61: sentence attention block, a channel gate on image features conditioned on a sentence.

The block re-weights the channels of an image feature map by a gate computed from the sentence
(question) embedding alone, in the form of a squeeze-and-excitation excitation whose squeeze is
replaced by the text:

    out = X ⊙ g(e_text),    g(e) = σ(W₂ ReLU(W₁ e)) ∈ (0, 1)^C,

with ``W₁`` reducing to ``dim // reduction`` units (SE's bottleneck, reduction 16). The gate does
not look at the image, so one sentence scales every image's channels the same way: channels
irrelevant to the question are turned down. It is a gate, not softmax attention: plain PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.mechanisms import register

__all__ = ["SentenceGate"]


@register("sentence_gate", paper="61", layout="[B, H, W, C]", time="O(T·C)", memory="O(T·C)")
class SentenceGate(nn.Module):
    """Sentence attention block: scale each image channel by a sigmoid gate computed from the text embedding.

    Paper: 61, Sentence Attention Blocks for Answer Grounding.

    Args:
        dim: image channels ``C``.
        heads: unused (a channel gate has no heads); accepted so that every mechanism is built
            as ``get(name, dim=..., heads=...)``.
        text_dim: width ``E`` of the sentence embedding; default ``dim``.
        reduction: the hidden layer has ``max(1, dim // reduction)`` units (SE's default: 16).

    Shapes:
        x ``[B, Hg, Wg, C]`` (channels-last; any ``[B, ..., C]`` works), text ``[B, E]`` → same as x.

    Example:
        >>> m = SentenceGate(dim=32, heads=1, text_dim=12)
        >>> m(torch.randn(2, 5, 5, 32), torch.randn(2, 12)).shape
        torch.Size([2, 5, 5, 32])
    """

    def __init__(self, dim: int, heads: int = 1, *, text_dim: int | None = None, reduction: int = 16):
        super().__init__()
        if not isinstance(dim, int) or not isinstance(heads, int) or dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive integers, got dim={dim!r}, heads={heads!r}")
        text_dim = dim if text_dim is None else text_dim
        if not isinstance(text_dim, int) or text_dim <= 0:
            raise ValueError(f"text_dim must be a positive integer (the sentence embedding width), got text_dim={text_dim!r}")
        if not isinstance(reduction, int) or reduction <= 0:
            raise ValueError(f"reduction must be a positive integer (SE default: 16), got reduction={reduction!r}")
        self.dim, self.text_dim = dim, text_dim
        hidden = max(1, dim // reduction)
        self.excite = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def gate(self, text: Tensor) -> Tensor:
        """``g(e_text)`` ``[B, C]``, each entry in ``(0, 1)``."""
        if text.dim() != 2 or text.shape[-1] != self.text_dim:
            raise ValueError(f"text must be [B, E] with E={self.text_dim}, got shape {tuple(text.shape)}")
        return torch.sigmoid(self.excite(text))  # [B, C]

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B, H, W, C] (channels-last) with C={self.dim}, got shape {tuple(x.shape)}")
        g = self.gate(text)  # [B, C]
        if g.shape[0] != x.shape[0]:
            raise ValueError(f"x and text must share the batch, got x batch {x.shape[0]} and text batch {g.shape[0]}")
        return x * g.to(x.dtype).view(x.shape[0], *([1] * (x.dim() - 2)), self.dim)
