"""Paper 26 (VHD/VHR): scale chosen heads' outputs, and choose them by how much they read a context.

**The edit.** For a chosen head ``h`` with per-head output ``o_h`` (``[B, Tq, D]``, before
``o_proj``): ``o_h ← f · o_h``. Its share of the block output ``o_proj(concat_h o_h)`` is
``W_O[:, h] o_h``, so that share is multiplied by exactly ``f``; ``f = 1`` changes nothing.

**The probe, VHD** (He et al., "Cracking the code of hallucination in LVLMs with vision-aware
head divergence", ACL 2025, Eq. 4; there the context is the image):

    VHD_{l,h} = ‖ o_{l,h}(y_t | x_C, x_T) − o_{l,h}(y_t | x_T) ‖₂

the Euclidean distance between the head's output at the position that predicts the next token
(the last one) when the prompt contains the context segment ``x_C`` and when it does not. Inputs
are the two prompts, with and without the context.

**The selection, VHR** (same paper, Eq. 6–7 and Algorithm 1). In each layer, a head whose VHD is
high only because its output *surges* without the context is an outlier and gets ``VHD = 0``:

    VHD_{l,i} > μ(VHD_{l,*}) + σ(VHD_{l,*})  and  TA_{l,i} > μ(TA_{l,*}) + σ(TA_{l,*}),
    TA_{l,i} = ‖ o_{l,i}(y_t | x_T) ‖²

then the heads with ``VHD_{l,i} > median(VHD_{l,*})`` (half of them) are scaled by ``α = 2``
(§4.4). Layer by layer: the VHD of layer ``l`` is computed with the heads chosen in earlier
layers already reinforced. The heads are chosen once, at the first generation step, and kept
(§3.2); the paper reinforces the second and the last 14 layers of LLaVA-1.5 (``layers=``).

This file holds the edit and VHR's rule for one layer (:func:`vhr_rule`); measuring VHD and
choosing the heads run the model: :func:`attnlab.runs.calibrate.vhd` and
:func:`attnlab.runs.calibrate.vhr_select`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.edits._base import number, register
from attnlab.edits.head_mask import HeadEdit

__all__ = ["HeadScale", "vhr_rule"]


@register("head_scale", paper="26")
class HeadScale(HeadEdit):
    """Multiply chosen heads' outputs by ``factor``.

    Paper: 26 (VHD/VHR: reinforce vision-aware heads by α = 2).
    Shapes: ``[B, H, Tq, D] -> [B, H, Tq, D]`` (output stage).

    Args:
        heads: ``L18H6+L17H3`` pairs, or head indices with ``layers`` (see ``HeadEdit``).
        layers: layers for head indices.
        factor: ``f``; 1 changes nothing (the edit then binds nowhere), 0 is ``head_mask``'s zero.
        sites: site selection.

    Example:
        >>> import attnlab
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> base = attnlab.attend(q, k, v, is_causal=True)
        >>> out = attnlab.attend(q, k, v, is_causal=True, edits=[HeadScale(heads=[0], factor=2.0)])
        >>> torch.equal(out[:, 0], 2 * base[:, 0]), out.shape
        (True, torch.Size([1, 2, 5, 4]))
    """

    stage = "output"
    shown = ("factor",)

    def __init__(self, heads=None, layers=None, factor: float = 2.0, sites=None):
        super().__init__(heads, layers, sites)
        self.factor = number(factor, "factor", "head_scale", hint=" (1 changes nothing, 0 zeroes the heads, 2 is VHR's α)")

    def is_noop(self) -> bool:
        return self.factor == 1.0

    def function(self, site: Site) -> Callable:
        f = self.factor

        def scale(out: Tensor) -> Tensor:  # [B, H, Tq, D]
            idx = self.head_index(site, out.shape[1], out.device)
            return out.index_copy(1, idx, out.index_select(1, idx) * f)

        return scale


def vhr_rule(vhd: Tensor, ta: Tensor | None = None) -> list[int]:
    """VHR's choice in one layer (Eq. 6–7): zero the outliers' VHD, keep heads above the median.

    Args:
        vhd: ``[H]`` VHD of the layer's heads.
        ta: ``[H]`` ``‖o_h(without context)‖²``; None: no head is an outlier.

    Example:
        >>> vhr_rule(torch.tensor([0.1, 0.2, 0.3, 9.0]), ta=torch.tensor([1.0, 1.0, 1.0, 50.0]))
        [1, 2]
    """
    v = vhd.double().clone()
    if ta is not None:
        t = ta.double()
        outlier = (v > v.mean() + v.std()) & (t > t.mean() + t.std())  # output surges without the context
        v[outlier] = 0.0
    return torch.nonzero(v > v.median()).flatten().tolist()
