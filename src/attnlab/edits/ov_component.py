"""Paper 45 (Talking heads): remove one rank-1 component of a head's OV circuit.

A head writes ``W_O z`` (column convention; ``z [D]`` its output before the output projection).
With ``u [C]`` a unit left singular vector of its ``W_OV = W_O W_V`` (singular value ``s``, right
vector ``v``), the paper's ablation is ``W_OV ← W_OV − s u vᵀ = (I − u uᵀ) W_OV``. This edit does
that at the attention site's output stage, before the output projection, without touching a
weight: ``z ← z − a (rᵀ z)`` with ``r = W_Oᵀ u`` (what ``u`` reads of the head's output) and
``a = W_O⁺ u`` (``W_O a = u``, as ``u`` lies in ``W_O``'s column space), so that
``W_O z ← (I − u uᵀ) W_O z`` exactly.

The edit holds ``u`` and the head's ``W_O``; an edit does not read a model, so it has no spec
name: build it with :func:`attnlab.circuits.composition.ov_component_edit` (model, head,
component index) or directly from the two tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.edits.head_mask import HeadEdit

__all__ = ["RemoveOVComponent"]


class RemoveOVComponent(HeadEdit):
    """Remove the output direction ``u`` of one head's OV circuit: ``W_OV ← (I − u uᵀ) W_OV``.

    Paper: 45 (Talking heads: removing the composing OV component breaks induction).
    Shapes: output stage ``[B, H, Tq, D] -> [B, H, Tq, D]``; ``direction [C]``, ``W_O [D, C]``
    (row convention: the head adds ``z @ W_O``).

    Args:
        head: the head, ``"L0H1"`` or ``(0, 1)``.
        direction: ``u [C]``, a direction in the head's output space (the column space of
            ``W_Oᵀ``), e.g. a left singular vector of its ``W_OV``; normalised here.
        W_O: the head's output projection ``[D, C]``.

    Example:
        >>> import attnlab
        >>> W_O = torch.randn(4, 6)  # head 1's output projection [D, C]
        >>> edit = RemoveOVComponent("L0H1", direction=W_O[0], W_O=W_O)
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> site = attnlab.Site("layers.0.attn", layer=0, num_heads=2)
        >>> out = attnlab.attend(q, k, v, is_causal=True, site=site, edits=[edit])
        >>> float((out[0, 1] @ W_O @ W_O[0]).abs().max()) < 1e-4, out.shape
        (True, torch.Size([1, 2, 5, 4]))
    """

    stage = "output"
    name = "ov_component"

    def __init__(self, head, *, direction: Tensor, W_O: Tensor, sites=None):
        super().__init__(heads=[head], sites=sites)
        if (self.by_layer is None) or sum(len(h) for h in self.by_layer.values()) != 1:
            raise ValueError(f"ov_component: name one head as 'L0H1' or (0, 1), got head={head!r}")
        if W_O.dim() != 2 or direction.shape != (W_O.shape[1],):
            raise ValueError(
                f"ov_component: W_O is the head's [D, C] output projection and direction a [C] vector, "
                f"got W_O {list(W_O.shape)} and direction {list(direction.shape)}"
            )
        u = direction.detach().double()
        norm = u.norm()
        if not norm > 0:
            raise ValueError("ov_component: direction must be a nonzero vector")
        u = u / norm
        W = W_O.detach().double()  # [D, C]
        write = torch.linalg.lstsq(W.T, u[:, None]).solution[:, 0]  # a [D]: W_Oᵀ a = u
        if (W.T @ write - u).norm() > 1e-6:
            raise ValueError(
                "ov_component: direction is not in the head's output space (the span of W_O's rows): "
                "give a left singular vector of the head's W_OV (attnlab.circuits.composition.ov_svd)"
            )
        self.read, self.write = (W @ u).float(), write.float()  # r [D], a [D]
        self.layer, self.head = next((layer, hs[0]) for layer, hs in self.by_layer.items())

    def function(self, site: Site) -> Callable:
        h = self.head

        def remove(out: Tensor) -> Tensor:  # [B, H, Tq, D]
            z = out[:, h]  # [B, Tq, D]
            r, a = self.read.to(out.device, out.dtype), self.write.to(out.device, out.dtype)
            out = out.clone()
            out[:, h] = z - (z @ r)[..., None] * a  # [B, Tq, D]
            return out

        return remove

    def __repr__(self) -> str:
        return f"RemoveOVComponent(head=L{self.layer}H{self.head})"
