"""Paper 32: RCMHA, Relative Convolutional Multi-Head Attention.

RCMHA changes two things in causal multi-head attention:

1. a depthwise causal convolution (kernel 3) over time on the projected queries, keys and
   values, each channel mixing only its own recent past (as in Primer's multi-dconv-head
   attention);
2. relative position scores in place of absolute positions: a learned bias per head and per
   distance ``i − j`` is added to the attention logits (distances beyond ``max_distance`` share
   the last bias), passed to :func:`attnlab.core.attend` as ``bias=``.

The paper takes its relative encoding from Transformer-XL, whose logits also hold a
content-times-position term ``q_i · R_{i−j}``; attnlab keeps the position-only term, which is a
free per-head function of the distance. Nothing in the layer depends on absolute position,
so shifting the input shifts the output. The layer is always causal; convolutions have no
bias (a zero token gives zero queries, keys and values, as the convolution's own padding does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site
from attnlab.mechanisms import register
from attnlab.mechanisms.mha import MultiHeadAttention

__all__ = ["RelativeConvolutionalAttention", "causal_depthwise_conv"]


def causal_depthwise_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """Apply a depthwise ``conv`` over time, padded on the left so token ``t`` sees only ``t−k+1 .. t``.

    Shapes:
        ``x [B, T, W] -> [B, T, W]``.
    """
    x = F.pad(rearrange(x, "b t w -> b w t"), (conv.kernel_size[0] - 1, 0))  # [B, W, T + k - 1]
    return rearrange(conv(x), "b w t -> b t w")  # [B, T, W]


@register("rcmha", paper="32", time="O(T²)", memory="O(T²) (dense relative bias)")
class RelativeConvolutionalAttention(MultiHeadAttention):
    """Causal multi-head attention with depthwise-convolved q/k/v and learned relative position biases.

    Paper: 32 (RCMHA: Relative Convolutional Multi-Head Attention for Natural Language Modelling).

    Args:
        dim: model width ``C``; must be divisible by ``heads``.
        heads: query heads ``H``.
        kv_heads: key/value heads (GQA); ``heads`` if None.
        kernel_size: the depthwise convolution's width over time.
        max_distance: distances ``0 .. max_distance`` get their own bias per head; longer ones
            share the bias of ``max_distance``.
        backend: softmax backend for :func:`attnlab.core.attend`.

    Shapes:
        ``x [B, T, C] -> [B, T, C]``; ``relative_bias [H, max_distance + 1]``.

    Example:
        >>> m = RelativeConvolutionalAttention(32, 4)
        >>> m(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        kernel_size: int = 3,
        max_distance: int = 128,
        backend: str = "auto",
    ):
        super().__init__(dim, heads, kv_heads=kv_heads, is_causal=True, backend=backend)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be an int >= 1, got kernel_size={kernel_size!r}")
        if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 0:
            raise ValueError(f"max_distance must be an int >= 0, got max_distance={max_distance!r}")
        self.kernel_size, self.max_distance = kernel_size, max_distance
        q_width, kv_width = heads * self.head_dim, self.kv_heads * self.head_dim
        self.conv_q = nn.Conv1d(q_width, q_width, kernel_size, groups=q_width, bias=False)
        self.conv_k = nn.Conv1d(kv_width, kv_width, kernel_size, groups=kv_width, bias=False)
        self.conv_v = nn.Conv1d(kv_width, kv_width, kernel_size, groups=kv_width, bias=False)
        self.relative_bias = nn.Parameter(torch.zeros(heads, max_distance + 1))
        self.site = Site(name="rcmha", num_heads=heads, num_kv_heads=self.kv_heads)

    def position_bias(self, T: int) -> Tensor:
        """Logit biases ``[1, H, T, T]``: entry ``(i, j)`` is ``relative_bias[h, min(i − j, max_distance)]`` (``j > i`` is masked)."""
        pos = torch.arange(T, device=self.relative_bias.device)
        distance = (pos[:, None] - pos[None, :]).clamp(0, self.max_distance)  # [T, T]
        return self.relative_bias[:, distance][None]  # [1, H, T, T]

    def forward(self, x: Tensor, mask=None) -> Tensor:
        self.check_input(x)
        q = causal_depthwise_conv(self.q_proj(x), self.conv_q)  # [B, T, H·D]
        k = causal_depthwise_conv(self.k_proj(x), self.conv_k)  # [B, T, Hkv·D]
        v = causal_depthwise_conv(self.v_proj(x), self.conv_v)  # [B, T, Hkv·D]
        q, k, v = self.split_heads(q, k, v)
        bias = self.position_bias(x.shape[1]).to(q.dtype)
        return self.merge(self.attend_heads(q, k, v, mask=mask, bias=bias))
