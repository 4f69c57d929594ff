"""The sdpa backend: PyTorch's fused ``scaled_dot_product_attention``.

Predicate masks are materialised as a dense boolean tensor. Logit edits (``score_mod``) cannot
run inside the fused kernel; :func:`attnlab.core.attend` never sends them here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnlab.core import masks as M
from attnlab.core.backends.base import Inputs

__all__ = ["Sdpa"]


@functools.cache
def empty_bias_rows_give_zero(device_type: str) -> bool:
    """Whether every SDPA kernel on this kind of device gives 0 on a row whose bias is -inf throughout.

    Tried once per process and device type on a tiny input, forward and backward, with each
    kernel PyTorch has there. PyTorch 2.13's CPU kernels do (flash and math alike). Where one
    gives NaN, :class:`Sdpa` finds and zeroes such rows after each call.
    """
    with torch.inference_mode(False), torch.enable_grad():  # the first call may come from inference code
        q = torch.ones(1, 1, 2, 8, device=device_type, requires_grad=True)
        bias = torch.zeros(1, 1, 2, 2, device=device_type)
        bias[..., 0, :] = float("-inf")  # row 0 sees nothing
        for kernel in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel(kernel):
                    out = F.scaled_dot_product_attention(q, q, q, attn_mask=bias)
            except RuntimeError:  # this kernel does not exist on this device, or refuses the input
                continue
            (grad,) = torch.autograd.grad(out.sum(), q)
            if not (out[..., 0, :] == 0).all() or grad.isnan().any():
                return False
    return True


class Sdpa:
    """PyTorch SDPA (flash/math kernels chosen by PyTorch). Rows with no visible key give 0."""

    name = "sdpa"
    normalizers = ("softmax",)

    def __call__(self, x: Inputs) -> Tensor:
        if x.score_mod is not None:
            raise ValueError("the sdpa backend cannot apply logit edits: use backend='blocked', 'reference' or 'auto'")
        is_causal = x.mask is M.causal and x.dense_mask is None and x.bias is None  # the fused causal path
        allowed = None if is_causal else x.allowed()
        attn_mask = allowed
        if x.bias is not None:
            bias = x.bias if x.bias.dtype == x.q.dtype else x.bias.to(x.q.dtype)
            attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(
            x.q, x.k, x.v, attn_mask=attn_mask, is_causal=is_causal, scale=x.scale, enable_gqa=x.k.shape[1] != x.q.shape[1]
        )
        # A row whose bias is -inf everywhere is empty: where a kernel gives NaN there (the whole
        # row), find such rows from the NaNs of each row's first output, and scan the bias only
        # if there is one. Skipped where the kernels give 0: even this cost 5% of a small call.
        if x.bias is not None and not empty_bias_rows_give_zero(out.device.type):
            nan = out[..., :1].isnan()  # [B, H, Lq, 1]
            if bool(nan.any()):
                out = out.masked_fill(nan & torch.isneginf(attn_mask).all(-1, keepdim=True), 0.0)
        return out
