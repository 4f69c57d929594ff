"""Paper 29: AKI modality-mutual attention.

A multimodal LLM reads ``[image tokens][question tokens][answer tokens]`` under a causal mask,
so image tokens, which come first, never see the question. AKI ("Seeing is Understanding:
Unlocking Causal Attention into Modality-Mutual Attention") lets image rows also attend to the
question tokens, even later ones, while every other row, answer tokens above all, stays strictly
causal: nothing can read the answer before it is generated. The mask is
:func:`attnlab.core.masks.modality_mutual`; the layer is causal multi-head attention under it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core import Site, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register
from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["ModalityMutualAttention"]


@register("modality_mutual", paper="29", time="O(T²)", memory="O(T)")
class ModalityMutualAttention(MultiHeadAttention):
    """Causal multi-head attention in which image tokens also see the question tokens.

    Paper: 29 (AKI: Seeing is Understanding, modality-mutual attention).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: query heads ``H``.
        kv_heads: key/value heads (GQA); ``heads`` if None.
        rope: rotary position embedding on queries and keys.
        rope_base: RoPE's frequency base.
        backend: softmax backend for :func:`attnlab.core.attend`.

    Shapes:
        ``x [B, T, C]``, ``image`` and ``question`` bool ``[B, T]`` or ``[T]`` (True at image /
        question tokens; the rest are answer or text tokens) -> ``[B, T, C]``. Without ``image``
        and ``question`` it is causal ``mha``.

    Example:
        >>> m = ModalityMutualAttention(32, 4)
        >>> image = torch.tensor([True] * 4 + [False] * 6)
        >>> question = torch.tensor([False] * 4 + [True] * 3 + [False] * 3)
        >>> m(torch.randn(2, 10, 32), image, question).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        rope: bool = False,
        rope_base: float = 10000.0,
        backend: str = "auto",
    ):
        super().__init__(dim, heads, kv_heads=kv_heads, is_causal=True, rope=rope, rope_base=rope_base, backend=backend)
        self.site = Site(name="modality_mutual", num_heads=heads, num_kv_heads=self.kv_heads)

    def forward(self, x: Tensor, image=None, question=None) -> Tensor:
        self.check_input(x)
        if (image is None) != (question is None):
            raise ValueError("pass image and question together (bool [B, T] or [T]), or neither for plain causal attention")
        mask = M.causal
        if image is not None:
            image = torch.as_tensor(image, dtype=torch.bool, device=x.device)
            question = torch.as_tensor(question, dtype=torch.bool, device=x.device)
            mask = M.modality_mutual(image, question)  # causal | (image row & question column)
            if mask.batched and image.shape[0] != x.shape[0]:
                raise ValueError(f"image and question have batch {image.shape[0]} but x has batch {x.shape[0]}: they must match")
        q, k, v = self.project(x)
        out = attend(q, k, v, mask=mask, backend=self.backend, site=self.site)  # [B, H, T, D]; the mask holds causality
        return self.merge(out)
