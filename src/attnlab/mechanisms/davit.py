"""Paper 17: DaViT dual attention: channel group attention and spatial window attention.

- :class:`ChannelGroupAttention` (``"davit_channel"``): the channels are cut into ``heads``
  groups of ``d`` channels. Within a group, channels attend to channels with the tokens as
  features: ``A = softmax((K·s)ᵀ V)`` is a ``d × d`` map (``s = d^-½``, softmax over its last
  axis) that mixes the channels of ``Q``: ``out = Q Aᵀ``. Every output channel sees the whole
  image, and the cost is linear in tokens, ``O(T·d·C)``. This is softmax attention with the
  roles turned, so it runs through :func:`attnlab.core.attend` with queries ``Kᵀ``, keys ``Vᵀ``
  and values ``Qᵀ`` (length ``d``, features ``T``); probes see the ``d × d`` channel maps.
  Trained with nothing attached, it runs as matmuls over the token axis (``_ChannelSoftmax``).
- :class:`WindowAttention` (``"davit_window"``): softmax attention inside non-overlapping
  ``window × window`` windows, without position bias (DaViT's position signal is a
  convolution). Windows are gathered into the batch of one ``attend`` call; where the image's
  sides are not multiples of ``window``, the windows' slots past the edge are masked out as
  keys (the official code zero-pads them and lets them take part); with a probe or edit
  attached, as queries too, so that only the image's tokens are observed.
- :class:`DualAttention` (``"davit"``): DaViT's dual block, spatial then channel attention, each
  after a 3×3 depthwise convolutional position encoding and a LayerNorm, with residuals. The
  block's two FFNs are left to the model.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from attnlab.core import Site, attached, attend
from attnlab.core.backends.base import compute_dtype
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["ChannelGroupAttention", "DualAttention", "WindowAttention"]


def _check(dim: int, heads: int, **more: int) -> None:
    positive_ints(dim=dim, heads=heads, **more)
    if dim % heads:
        raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")


def _check_input(x: Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f"x must be [B, H, W, C] (channels-last) with C = dim = {dim}, got shape {tuple(x.shape)}")


def _flush(x: Tensor) -> Tensor:
    """``x`` with subnormal values set to 0 (in place): they are below 1.2e-38 in float32, and a
    matmul reading them ran 6x slower (long token axes make channel logits large, so softmax
    probabilities underflow)."""
    return x.masked_fill_(x.abs() < torch.finfo(x.dtype).tiny, 0.0)


class _ChannelSoftmax(torch.autograd.Function):
    """``softmax(K Vᵀ · scale) Q`` on ``q, k, v [B, h, d, T]`` with ``T`` long: the channel attention
    as matmuls over the contiguous token axis, and a hand-written backward that keeps that axis
    contiguous too.

    :func:`attnlab.core.attend` runs this with head dim ``T``: the layer's forward+backward at
    128×128 took 58 ms through SDPA, 110 ms as the same matmuls under autograd, 46 ms with this
    backward. Used only with gradients (without, SDPA's forward was as fast or faster: 0.75 ms
    against 0.95 at 32×32) and when no probe or edit is attached (they need the site).
    Arithmetic as in ``attend``: float32 for half inputs.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        dt = compute_dtype(q)
        p = _flush(torch.softmax(torch.matmul(k.to(dt), v.to(dt).transpose(-1, -2)) * scale, dim=-1))  # [B, h, d, d]
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, q.to(dt)).to(q.dtype)  # [B, h, d, T]

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, p = ctx.saved_tensors
        dtype, dt = q.dtype, p.dtype
        do, q, k, v = (t.to(dt) for t in (do, q, k, v))
        dp = torch.matmul(do, q.transpose(-1, -2))  # [B, h, d, d]
        ds = _flush(p * (dp - (dp * p).sum(-1, keepdim=True)) * ctx.scale)  # gradient of the logits K Vᵀ
        dq = torch.matmul(p.transpose(-1, -2), do)  # [B, h, d, T]
        dk, dv = torch.matmul(ds, v), torch.matmul(ds.transpose(-1, -2), k)
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), None


@register("davit_channel", paper="17", layout="[B, H, W, C]", time="O(T·C²/heads)", memory="O(T·C)")
class ChannelGroupAttention(nn.Module):
    """Channel group attention: channels attend to channels, the tokens being their features.

    Paper: 17 (DaViT: Dual Attention Vision Transformers).
    Shapes: ``x [B, H, W, C]`` (channels-last) -> ``[B, H, W, C]``.

    Args:
        dim: channels ``C``.
        heads: channel groups; ``dim`` must be divisible by ``heads``.
        qkv_bias: bias in the q/k/v projection (DaViT's models have one).
        backend: :func:`attnlab.core.attend` backend.

    Example:
        >>> import torch
        >>> m = ChannelGroupAttention(32, 4)
        >>> m(torch.randn(1, 5, 6, 32)).shape
        torch.Size([1, 5, 6, 32])
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        _check(dim, heads)
        self.dim, self.heads, self.backend = dim, heads, backend
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="davit.channel", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim)
        B, H, W, C = x.shape
        # Project channels-first, so that each channel's T values are contiguous for the T-long dot products.
        xt = x.reshape(B, H * W, C).transpose(1, 2)  # [B, C, T]
        if self.qkv.bias is None:
            qkv = torch.matmul(self.qkv.weight, xt)  # [B, 3C, T]
        else:  # the bias added inside the matmul: no second pass over (and copy of) [B, 3C, T]
            qkv = torch.baddbmm(self.qkv.bias[None, :, None], self.qkv.weight.expand(B, -1, -1), xt)
        q, k, v = qkv.view(B, 3, self.heads, C // self.heads, H * W).unbind(1)  # [B, h, d, T] each
        # Channel i of K attends to channel j of V over the tokens; the map mixes the channels of Q.
        if self.backend == "auto" and torch.is_grad_enabled() and not any(attached()):
            out = _ChannelSoftmax.apply(q, k, v, self.scale)  # training, and nobody observes: plain matmuls
        else:
            out = attend(k, v, q, scale=self.scale, backend=self.backend, site=self.site)  # [B, h, d, T]
        return self.proj(out.reshape(B, C, H * W).transpose(1, 2)).view(B, H, W, C)


@functools.lru_cache(maxsize=16)
def _window_index(B: int, H: int, W: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Where each window slot reads its token, and where each token's output lands.

    Returns ``rows [B·nW·w²]``: the token (a row of ``x`` as ``[B·H·W, C]``) in each slot of the
    windows ``[B·nW, w², C]``, and ``slots [B·H·W]``: the slot of each token, in token order.
    A slot past the image's edge reads the nearest edge token: it is masked as a key and its query
    row is never read back, so its content only has to be finite. One gather each way replaces
    a zero-pad and a partition on the way in and a merge and a crop on the way out (at 128×128,
    2.7× and 2.2× the gather's time).
    """
    ny, nx = -(-H // w), -(-W // w)
    ys, xs = torch.arange(ny * w, device=device).clamp_(max=H - 1), torch.arange(nx * w, device=device).clamp_(max=W - 1)
    token = (ys[:, None] * W + xs[None, :]).view(ny, w, nx, w).transpose(1, 2).reshape(-1)  # [nW·w²]
    slot = torch.arange(ny * nx * w * w, device=device).view(ny, nx, w, w).transpose(1, 2).reshape(ny * w, nx * w)
    slot = slot[:H, :W].reshape(-1)  # [H·W]
    b = torch.arange(B, device=device)[:, None]
    return (token + b * (H * W)).reshape(-1), (slot + b * (ny * nx * w * w)).reshape(-1)


@functools.lru_cache(maxsize=16)
def _padding_bias(B: int, H: int, W: int, w: int, queries: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[B·windows, 1, w², w²]``: 0 between tokens of the image, -inf where the key, or (if
    ``queries``) the query, is past the image's edge; ``[B·windows, 1, 1, w²]`` without ``queries``.

    Depends on shapes only, so it is built once. A float bias rather than a boolean mask: SDPA
    turns a boolean mask into one on every call (at 128×128, 15% of the attention's time).
    """
    ny, nx = -(-H // w), -(-W // w)
    real_y, real_x = torch.arange(ny * w, device=device) < H, torch.arange(nx * w, device=device) < W
    real = (real_y[:, None] & real_x[None, :]).view(ny, w, nx, w).transpose(1, 2).reshape(ny * nx, 1, w * w)  # [nW, 1, w²]
    allowed = (real[..., :, None] & real[..., None, :] if queries else real[..., None, :]).repeat(B, 1, 1, 1)  # [B·nW, 1, w²|1, w²]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


@register("davit_window", paper="17", layout="[B, H, W, C]", time="O(T·window²)", memory="O(T·window²)")
class WindowAttention(nn.Module):
    """Softmax attention inside non-overlapping ``window × window`` windows.

    Paper: 17 (DaViT: Dual Attention Vision Transformers).
    Shapes: ``x [B, H, W, C]`` (channels-last) -> ``[B, H, W, C]``.

    Args:
        dim: channels ``C``.
        heads: attention heads; ``dim`` must be divisible by ``heads``.
        window: window side (the paper's 7).
        qkv_bias: bias in the q/k/v projection (DaViT's models have one).
        backend: :func:`attnlab.core.attend` backend.

    Example:
        >>> import torch
        >>> m = WindowAttention(32, 4, window=3)
        >>> m(torch.randn(1, 5, 6, 32)).shape
        torch.Size([1, 5, 6, 32])
    """

    def __init__(self, dim: int, heads: int, *, window: int = 7, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        _check(dim, heads, window=window)
        self.dim, self.heads, self.window, self.backend = dim, heads, window, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name="davit.window", num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim)
        B, H, W, C = x.shape
        w, h = self.window, self.heads
        n, d = B * -(-H // w) * -(-W // w), C // h  # windows, head dim
        rows, slots = _window_index(B, H, W, w, x.device)
        # Cut x (C channels, not 3C) into windows with one gather; q, k and v are then views of the
        # projection, laid out as SDPA's CPU kernel reads them.
        xw = x.reshape(B * H * W, C).index_select(0, rows).view(n, w * w, C)  # [B·nW, w², C]
        q, k, v = self.qkv(xw).view(n, w * w, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B·nW, h, w², d] each
        # Observed, slots past the edge are empty query rows, so that probes see the image's tokens
        # only; otherwise their outputs are never read, and a bias on keys only is w² times smaller.
        bias = _padding_bias(B, H, W, w, any(attached()), x.dtype, x.device) if H % w or W % w else None  # [B·nW, 1, w²|1, w²]
        out = attend(q, k, v, bias=bias, backend=self.backend, site=self.site)  # [B·nW, h, w², d]
        out = out.transpose(1, 2).reshape(n * w * w, C).index_select(0, slots)  # [B·H·W, C], the image's tokens in order
        return self.proj(out).view(B, H, W, C)  # the projection covers the image's tokens only


class _ConvPosEnc(nn.Module):
    """``x + depthwise_conv3x3(x)`` on ``[B, H, W, C]``: DaViT's convolutional position encoding."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register("davit", paper="17", layout="[B, H, W, C]", time="O(T·window² + T·C²/heads)", memory="O(T·window²)")
class DualAttention(nn.Module):
    """DaViT's dual attention: spatial window attention, then channel group attention.

    Paper: 17 (DaViT: Dual Attention Vision Transformers).
    Shapes: ``x [B, H, W, C]`` (channels-last) -> ``[B, H, W, C]``.

    ``x ← cpe(x); x ← x + window(norm(x)); x ← cpe(x); x ← x + channel(norm(x))``: local
    fine-grained interactions, then global ones through the channel tokens. The FFNs that
    follow each attention in the paper's blocks belong to the model.

    Args:
        dim: channels ``C``.
        heads: heads of the window attention and channel groups of the channel attention.
        window: window side (the paper's 7).
        backend: :func:`attnlab.core.attend` backend of both attentions.

    Example:
        >>> import torch
        >>> m = DualAttention(32, 4, window=3)
        >>> m(torch.randn(1, 5, 6, 32)).shape
        torch.Size([1, 5, 6, 32])
    """

    def __init__(self, dim: int, heads: int, *, window: int = 7, backend: str = "auto"):
        super().__init__()
        _check(dim, heads, window=window)
        self.dim = dim
        self.cpe_spatial, self.cpe_channel = _ConvPosEnc(dim), _ConvPosEnc(dim)
        self.norm_spatial, self.norm_channel = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.spatial = WindowAttention(dim, heads, window=window, backend=backend)
        self.channel = ChannelGroupAttention(dim, heads, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim)
        x = self.cpe_spatial(x)
        x = x + self.spatial(self.norm_spatial(x))
        x = self.cpe_channel(x)
        return x + self.channel(self.norm_channel(x))
