"""The sdpa backend: PyTorch's fused ``scaled_dot_product_attention``.

Predicate masks are materialised as a dense boolean tensor. Logit edits (``score_mod``) cannot
run inside the fused kernel; :func:`attnlab.core.attend` never sends them here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.core import masks as M
from attnlab.core.backends.base import Inputs

__all__ = ["Sdpa"]


class Sdpa:
    """PyTorch SDPA (flash/math kernels chosen by PyTorch). Rows with no visible key give 0."""

    name = "sdpa"

    def __call__(self, x: Inputs) -> Tensor:
        if x.score_mod is not None:
            raise ValueError("the sdpa backend cannot apply logit edits: use backend='blocked', 'reference' or 'auto'")
        is_causal = x.mask is M.causal and x.dense_mask is None and x.bias is None  # the fused causal path
        allowed = None if is_causal else x.allowed()
        attn_mask = allowed
        if x.bias is not None:
            bias = x.bias.to(x.q.dtype)
            attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(
            x.q, x.k, x.v, attn_mask=attn_mask, is_causal=is_causal, scale=x.scale, enable_gqa=x.k.shape[1] != x.q.shape[1]
        )
        # A row whose bias is -inf everywhere is empty too: the flash kernel gives 0 there, the math
        # path NaN in the whole row. So only rows whose first output is NaN are candidates, and the
        # bias is scanned only when there is one (a scan of the whole bias cost 7% of a forward of
        # the aggregated mechanism; a sum over the whole output, 10-30% of a small SDPA call).
        if x.bias is not None:
            nan = out[..., :1].isnan()  # [B, H, Lq, 1]
            if bool(nan.any()):
                out = out.masked_fill(nan & torch.isneginf(attn_mask).all(-1, keepdim=True), 0.0)
        return out
