"""The flex backend: FlexAttention, compiled.

Predicate masks become a ``BlockMask`` (cached per mask and shape), dense boolean masks a
lookup ``mask_mod``, the bias and logit edits a ``score_mod``.

Where it cannot run: on CPU, torch's FlexAttention has no backward. **Rule:** when gradients
are needed on CPU, this backend hands the call to the ``blocked`` backend (same masks, same
edits, with a backward) and warns once. A cold compile takes 20-45 s on CPU; later calls with
the same shapes are fast.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from attnlab.core.backends.base import Inputs

__all__ = ["Flex"]


RECOMPILE_LIMIT = 64  # each new shape or mask recompiles; dynamo's default of 8 would silently fall back to eager


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False)


class Flex:
    """FlexAttention via ``torch.compile``; on CPU forward only (see the module's fallback rule)."""

    name = "flex"
    normalizers = ("softmax",)
    _warned = False

    def __call__(self, x: Inputs) -> Tensor:
        if x.needs_grad and x.q.device.type == "cpu":
            if not Flex._warned:
                warnings.warn("FlexAttention has no backward on CPU: using the blocked backend for calls that need gradients", stacklevel=3)
                Flex._warned = True
            from attnlab.core.backends.blocked import Blocked

            return Blocked()(x)
        B, H, Tq, _ = x.q.shape
        Tk = x.k.shape[2]
        block_mask = None
        if x.mask is not None and x.dense_mask is None:
            key = ("flex", Tq, Tk, B, H, str(x.q.device))
            block_mask = x.mask._plans.get(key)
            if block_mask is None:
                block_mask = x.mask._plans[key] = x.mask.to_block_mask(Tq, Tk, batch=B, heads=H, device=x.q.device)
        elif x.mask is not None or x.dense_mask is not None:
            from torch.nn.attention.flex_attention import create_block_mask

            allowed = x.allowed()
            bb, hh = allowed.shape[:2]

            def lookup(b, h, q_idx, kv_idx):
                return allowed[b if bb > 1 else 0, h if hh > 1 else 0, q_idx, kv_idx]

            block_mask = create_block_mask(lookup, B if bb > 1 else None, H if hh > 1 else None, Tq, Tk, device=x.q.device)
        out = _compiled()(x.q, x.k, x.v, score_mod=_score_mod(x), block_mask=block_mask, scale=x.scale, enable_gqa=x.k.shape[1] != H)
        return out


def _score_mod(x: Inputs):
    bias, mod = x.bias, x.score_mod
    if bias is None and mod is None:
        return None
    if bias is not None:
        bias = bias.float()
        bb, hh, qq = bias.shape[:3]

    def score_mod(score, b, h, q_idx, kv_idx):
        if bias is not None:
            score = score + bias[b if bb > 1 else 0, h if hh > 1 else 0, q_idx if qq > 1 else 0, kv_idx]
        if mod is not None:
            score = mod(score, b, h, q_idx, kv_idx)
        return score

    return score_mod
