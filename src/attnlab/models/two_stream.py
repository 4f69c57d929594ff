"""Paper 6 (gCOG): a two-stream model whose instruction stream cross-attends to the stimulus stream.

Ito et al. 2024 ("On the generalization capacity of neural networks during generic multimodal
reasoning") compare single-stream transformers, which read stimulus and instruction as one
sequence, with a cross-attention model: the stimulus (the grid) is encoded by its own
self-attention encoder, and the instruction stream, at every layer, attends to its own tokens and
then to the encoded stimulus (instruction tokens as queries, stimulus as keys and values). They
find it degrades less as distractors are added.

``TwoStream`` splits each input sequence at ``split``: tokens before it are the stimulus stream
(gCOG-lite's grid, ``task.grid_len`` tokens), the rest the instruction stream (separator,
instruction, padding and the query token, whose logits are the answer). Both streams are
bidirectional encoders with learned positions; every attention goes through
:func:`attnlab.core.attend` at a site: ``stimulus.{i}.attn`` (grid self-attention),
``layers.{i}.attn`` (instruction self-attention) and ``layers.{i}.cross`` (instruction to grid).
The stimulus stream never reads the instruction. ``forward`` returns ``[B, T, V]`` logits in the
input's order (or ``[N, V]`` at ``where``), as :class:`~attnlab.models.tiny.TinyTransformer`
does, so :func:`attnlab.train.train` trains it on the ``gcog_lite`` task as it is.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attend

__all__ = ["TwoStream"]


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself if None), bidirectional, at a named site.

    Shapes: ``x [B, Tq, C]``, ``context [B, Tk, C]`` -> ``[B, Tq, C]``.
    """

    def __init__(self, dim: int, heads: int, name: str):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.site = Site(name=name, num_heads=heads, num_kv_heads=heads)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, Tq, D]
        k, v = rearrange(self.kv(context), "b t (two h d) -> two b h t d", two=2, h=self.heads)  # [B, H, Tk, D] each
        return self.proj(rearrange(attend(q, k, v, site=self.site), "b h t d -> b t (h d)"))  # [B, Tq, C]


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class StimulusBlock(nn.Module):
    """Pre-norm encoder block of the stimulus stream: self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int, layer: int):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = (
            nn.LayerNorm(dim),
            Attention(dim, heads, f"stimulus.{layer}.attn"),
            nn.LayerNorm(dim),
            _mlp(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class InstructionBlock(nn.Module):
    """Pre-norm block of the instruction stream: self-attention, cross-attention to the stimulus, an MLP."""

    def __init__(self, dim: int, heads: int, layer: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, f"layers.{layer}.attn")
        self.norm2, self.cross = nn.LayerNorm(dim), Attention(dim, heads, f"layers.{layer}.cross")
        self.norm3, self.mlp = nn.LayerNorm(dim), _mlp(dim)

    def forward(self, x: Tensor, stimulus: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm2(x), stimulus)
        return x + self.mlp(self.norm3(x))


class TwoStream(nn.Module):
    """Cross-attention model for gCOG: a stimulus encoder, and an instruction stream that cross-attends to it at every layer.

    Paper: 6 (gCOG, Ito et al. 2024), the cross-attention model it compares with single-stream transformers.
    Shapes: ``inputs [B, T]`` token ids (or ``[B, T, input_dim]`` floats) -> logits ``[B, T, V]`` (``[N, V]`` with ``where``);
    stimulus ``inputs[:, :split]``, instruction ``inputs[:, split:]``.

    Args:
        vocab_size: tokens ``V``.
        split: stimulus tokens at the start of every sequence (gCOG-lite: ``task.grid_len``).
        max_len: longest input (for the learned positions of both streams).
        dim: model width ``C``.
        heads: attention heads.
        layers: blocks of each stream.
        input_dim: read float inputs ``[B, T, input_dim]`` through a linear layer instead of token
            ids (gCOG-lite's ``encoding="objects"``: one feature row per grid cell and instruction node).

    Example:
        >>> from attnlab.tasks.gcog_lite import GCOGLite
        >>> task = GCOGLite()
        >>> model = TwoStream(task.vocab_size, split=task.grid_len, max_len=task.seq_len, dim=32, heads=2)
        >>> model(task.batch(2).inputs).shape
        torch.Size([2, 65, 21])
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        split: int,
        max_len: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        input_dim: int | None = None,
    ):
        super().__init__()
        for name, n in (
            ("vocab_size", vocab_size),
            ("split", split),
            ("max_len", max_len),
            ("dim", dim),
            ("heads", heads),
            ("layers", layers),
        ):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={n!r}")
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1):
            raise ValueError(f"input_dim must be a positive int or None, got input_dim={input_dim!r}")
        if split >= max_len:
            raise ValueError(f"split must leave instruction tokens before max_len, got split={split}, max_len={max_len}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        self.split, self.max_len, self.dim, self.heads, self.input_dim = split, max_len, dim, heads, input_dim
        self.embed = nn.Embedding(vocab_size, dim) if input_dim is None else nn.Linear(input_dim, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.stimulus = nn.ModuleList(StimulusBlock(dim, heads, i) for i in range(layers))
        self.layers = nn.ModuleList(InstructionBlock(dim, heads, i) for i in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def hidden(self, inputs: Tensor) -> Tensor:
        """Final states ``[B, T, C]``: the stimulus stream's, then the instruction stream's."""
        shape = "[batch, tokens] token ids" if self.input_dim is None else f"[batch, tokens, {self.input_dim}] floats"
        ids = self.input_dim is None and inputs.dim() == 2 and not inputs.dtype.is_floating_point
        rows = self.input_dim is not None and inputs.dim() == 3 and inputs.shape[-1] == self.input_dim and inputs.dtype.is_floating_point
        if not (ids or rows) or not self.split < inputs.shape[1] <= self.max_len:
            raise ValueError(
                f"inputs must be {shape} with split={self.split} < tokens <= max_len={self.max_len}, "
                f"got shape {tuple(inputs.shape)} ({inputs.dtype})"
            )
        x = self.embed(inputs) + self.pos.weight[: inputs.shape[1]]  # [B, T, C]
        s, x = x[:, : self.split], x[:, self.split :]  # [B, Ts, C], [B, Ti, C]
        for block in self.stimulus:
            s = block(s)
        for block in self.layers:
            x = block(x, s)
        return self.norm(torch.cat([s, x], dim=1))  # [B, T, C]

    def forward(self, inputs: Tensor, where: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]``; with ``where`` (bool ``[B, T]``) only at those positions, ``[N, V]``."""
        h = self.hidden(inputs)
        return self.head(h if where is None else h[where])
