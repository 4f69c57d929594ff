"""What a backend receives: checked, normalised attention inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from attnlab.core.masks import Mask

__all__ = ["Backend", "Inputs", "compute_dtype", "index_grids"]


def compute_dtype(t: Tensor) -> torch.dtype:
    """Softmax statistics accumulate in float32 for half inputs, in float64 for float64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass
class Inputs:
    """Attention inputs after :func:`attnlab.core.attend` has checked them.

    Attributes:
        q: ``[B, H, Tq, D]``.
        k: ``[B, Hkv, Tk, D]``, with ``H % Hkv == 0``.
        v: ``[B, Hkv, Tk, Dv]``.
        scale: multiplies ``q kᵀ``.
        mask: a predicate mask, or None.
        dense_mask: a boolean tensor ``[B|1, H|1, Tq, Tk]``, or None.
        bias: an additive float tensor ``[B|1, H|1, Tq|1, Tk]``, or None.
        score_mod: the composed logit edits ``fn(score, b, h, q_idx, kv_idx)``, or None.
        normalizer: ``"softmax"``, or ``"relu"`` (paper 68: ``ReLU(s) / n_visible``), which only
            backends listing it in their ``normalizers`` compute.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    mask: Mask | None = None
    dense_mask: Tensor | None = None
    bias: Tensor | None = None
    score_mod: Callable | None = None
    normalizer: str = "softmax"

    def allowed(self, dense: bool = False) -> Tensor | None:
        """The boolean mask as a tensor ``[B|1, H|1, Tq, Tk]`` (None if everything is allowed)."""
        out = self.dense_mask
        if self.mask is not None:
            B, H, Tq, _ = self.q.shape
            m = self.mask.dense(Tq, self.k.shape[2], batch=B, heads=H, device=self.q.device)
            out = m if out is None else out & m
        return out

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (self.q, self.k, self.v, self.bias))


class Backend(Protocol):
    """A softmax attention implementation: ``backend(inputs) -> out [B, H, Tq, Dv]``.

    ``normalizers`` lists what it computes: ``("softmax",)``, or more (the reference backend
    also computes ReLU attention).
    """

    name: str
    normalizers: tuple[str, ...]

    def __call__(self, x: Inputs) -> Tensor: ...


def index_grids(B: int, H: int, Tq: int, Tk: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcasting ``b, h, q_idx, kv_idx`` for a ``[B, H, Tq, Tk]`` score tensor."""
    return (
        torch.arange(B, device=device).view(-1, 1, 1, 1),
        torch.arange(H, device=device).view(1, -1, 1, 1),
        torch.arange(Tq, device=device).view(1, 1, -1, 1),
        torch.arange(Tk, device=device).view(1, 1, 1, -1),
    )
