"""Paper 43 (multi-scale self-guided attention): the guiding and reconstruction losses of the attention modules.

In Sinha & Dolz's network each scale ``s`` has a guided attention module: two encoder-decoders in
sequence around the PAM/CAM attention (:class:`attnlab.mechanisms.pam_cam.PamCam`). Two auxiliary
losses join the segmentation loss:

- the guiding loss, ``L_G = Σ_s ‖E_s¹ − E_s²‖²``: the encodings of the first and the second
  encoder-decoder of a scale are pulled together, so that the second refines what the first found;
- the reconstruction loss, ``L_Rec = Σ_s ‖F_s − F̂_s‖²``: each encoder-decoder reconstructs its input.

``‖·‖²`` is the mean squared error over the elements (``reduction="mean"``, as PyTorch's
``MSELoss``) or the sum of squares (``reduction="sum"``). The total is
``L_seg + guide_weight · L_G + rec_weight · L_Rec`` (:func:`self_guided_loss`) with weights 0.25
and 0.1 by default, as in the authors' training code (MSE per scale, summed over 4 scales for
``L_G`` and 8 encoder-decoders for ``L_Rec``). The encoder-decoders themselves are not here: a
model passes its encodings and reconstructions, and reports the auxiliary part to
:func:`attnlab.train.train` by setting ``aux_loss`` on one of its modules.

    >>> import torch
    >>> e = [torch.ones(1, 2, 2, 4)]
    >>> float(guiding_loss(e, [torch.zeros(1, 2, 2, 4)]))
    1.0
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["guiding_loss", "reconstruction_loss", "self_guided_loss"]

_REDUCTIONS = ("mean", "sum")


def _sum_of_squares(a: list[Tensor], b: list[Tensor], what: str, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got reduction={reduction!r}")
    if len(a) != len(b) or not a:
        raise ValueError(f"{what}: pass one tensor per scale in both lists, got {len(a)} and {len(b)}")
    total = 0.0
    for s, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise ValueError(f"{what}: scale {s} has shapes {tuple(x.shape)} and {tuple(y.shape)}; they must match")
        d = (x.float() - y.float()) ** 2
        total = total + (d.mean() if reduction == "mean" else d.sum())
    return total


def guiding_loss(first: list[Tensor], second: list[Tensor], *, reduction: str = "mean") -> Tensor:
    """``Σ_s ‖E_s¹ − E_s²‖²`` over the scales: the encodings of the two encoder-decoders of each scale.

    Paper: 43, Multi-scale self-guided attention for medical image segmentation (guiding loss).

    Shapes:
        two lists (one entry per scale) of tensors of one shape per scale → scalar.
    """
    return _sum_of_squares(first, second, "guiding_loss", reduction)


def reconstruction_loss(inputs: list[Tensor], reconstructions: list[Tensor], *, reduction: str = "mean") -> Tensor:
    """``Σ ‖F − F̂‖²`` over the encoder-decoders: each one's input against its reconstruction.

    Paper: 43, Multi-scale self-guided attention for medical image segmentation (reconstruction loss).

    Shapes:
        two lists of tensors of one shape per entry → scalar.
    """
    return _sum_of_squares(inputs, reconstructions, "reconstruction_loss", reduction)


def self_guided_loss(
    seg_loss: Tensor,
    first: list[Tensor],
    second: list[Tensor],
    inputs: list[Tensor],
    reconstructions: list[Tensor],
    *,
    guide_weight: float = 0.25,
    rec_weight: float = 0.1,
    reduction: str = "mean",
) -> Tensor:
    """``L_seg + guide_weight · L_G + rec_weight · L_Rec``.

    Paper: 43, Multi-scale self-guided attention for medical image segmentation.
    """
    return (
        seg_loss
        + guide_weight * guiding_loss(first, second, reduction=reduction)
        + rec_weight * reconstruction_loss(inputs, reconstructions, reduction=reduction)
    )
