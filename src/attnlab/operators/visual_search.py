"""Paper 40: visual search as top-down attention, the target's features convolved over the search image.

The search model behind the visual search asymmetry study builds a top-down attention map by
using the target's feature map as a convolution kernel over the search image's feature map,

    M = conv2d(F_search, F_target)    (cross-correlation, padded to the search map's size),

then fixates by winner-take-all: the next fixation is the argmax of ``M``; if it is not on the
target, inhibition of return zeroes ``M`` within ``ior_radius`` of it and the next argmax is
taken. The number of fixations until the target is found is the model's reaction time.
:func:`search_display` draws the check's displays: items on a grid, each a patch of noisy
one-hot features (a colour and an orientation); a pop-out target shares no feature with its
distractors, a conjunction target shares one with each.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from attnlab.operators import register

__all__ = ["search_display", "topdown_map", "winner_take_all"]


@register("topdown_map", paper="40")
def topdown_map(search: Tensor, target: Tensor) -> Tensor:
    """Top-down attention map: the target's features as a convolution kernel over the search features.

    Paper: 40, Visual Search Asymmetry (deep nets and humans share similar inherent biases).

    Shapes:
        search ``[B, C, H, W]``, target ``[B, C, h, w]`` (odd ``h, w``) → map ``[B, H, W]``.

    Example:
        >>> topdown_map(torch.randn(2, 4, 16, 16), torch.randn(2, 4, 3, 3)).shape
        torch.Size([2, 16, 16])
    """
    if search.dim() != 4 or target.dim() != 4 or search.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"search must be [B, C, H, W] and target [B, C, h, w] with the same B and C, got {tuple(search.shape)} and {tuple(target.shape)}"
        )
    h, w = target.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"the target's map must have odd height and width (centred kernel), got {h}x{w}: crop or pad it")
    B, C, H, W = search.shape
    out = F.conv2d(search.reshape(1, B * C, H, W), target, padding=(h // 2, w // 2), groups=B)  # (1, B, H, W): one kernel per image
    return out[0]


@register("winner_take_all", paper="40")
def winner_take_all(attention: Tensor, target: Tensor, *, ior_radius: float = 1.5, max_fixations: int | None = None) -> Tensor:
    """Fixations by winner-take-all with inhibition of return until one lands on the target.

    Paper: 40, Visual Search Asymmetry.

    Args:
        attention: ``[H, W]`` map (e.g. one image of :func:`topdown_map`).
        target: ``[H, W]`` bool, where a fixation finds the target.
        ior_radius: after a miss, the map is set to ``-inf`` within this (Euclidean, in pixels) of the fixation.
        max_fixations: stop after this many (default: until the map is exhausted).

    Shapes:
        → fixations ``[F, 2]`` long (row, column), the last one on the target if it was found.

    Example:
        >>> m = torch.zeros(5, 5); m[1, 1], m[3, 4] = 2.0, 1.0
        >>> winner_take_all(m, m == 1.0).tolist()
        [[1, 1], [3, 4]]
    """
    if attention.dim() != 2 or target.shape != attention.shape or target.dtype != torch.bool:
        raise ValueError(
            f"attention must be [H, W] and target a bool mask of the same shape, got {tuple(attention.shape)} and {target.dtype} {tuple(target.shape)}"
        )
    if not ior_radius > 0:
        raise ValueError(f"ior_radius must be > 0 (pixels inhibited around a miss), got ior_radius={ior_radius!r}")
    H, W = attention.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")  # (H, W) each
    m = attention.detach().clone().float()
    fixations = []
    limit = H * W if max_fixations is None else max_fixations
    while len(fixations) < limit and bool(torch.isfinite(m).any()):
        i = int(m.flatten().argmax())
        r, c = divmod(i, W)
        fixations.append((r, c))
        if target[r, c]:
            break
        m[(rows - r) ** 2 + (cols - c) ** 2 <= ior_radius**2] = float("-inf")  # inhibition of return
    return torch.tensor(fixations, dtype=torch.long).view(-1, 2)


def search_display(
    n_items: int, kind: str, *, grid: int = 6, patch: int = 3, noise: float = 0.75, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A search display of ``n_items`` on a ``grid × grid`` board of ``patch``-pixel cells, and its target.

    Features: 4 channels, colour (red, green) and orientation (vertical, horizontal), one-hot per
    item plus N(0, ``noise``²) per item pixel (the background is 0). The target is red-vertical; ``kind="popout"``
    distractors are green-horizontal (no shared feature), ``kind="conjunction"`` distractors are
    red-horizontal or green-vertical (one shared feature each).

    Returns:
        search ``[4, grid·patch, grid·patch]``, target features ``[4, patch, patch]``, target mask ``[grid·patch, grid·patch]`` bool.
    """
    if kind not in ("popout", "conjunction"):
        raise ValueError(f"kind must be 'popout' or 'conjunction', got kind={kind!r}")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or not 1 <= n_items <= grid * grid:
        raise ValueError(f"n_items must be an integer in [1, grid² = {grid * grid}], got n_items={n_items!r}")
    size = grid * patch
    red_vertical, others = torch.tensor([1.0, 0, 1, 0]), {"popout": [[0.0, 1, 0, 1]], "conjunction": [[1.0, 0, 0, 1], [0.0, 1, 1, 0]]}[kind]
    search = torch.zeros(4, size, size)  # (4, H, W)
    mask = torch.zeros(size, size, dtype=torch.bool)
    cells = torch.randperm(grid * grid, generator=generator)[:n_items]
    for j, cell in enumerate(cells.tolist()):
        r, c = divmod(cell, grid)
        box = (slice(None), slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
        feat = red_vertical if j == 0 else torch.tensor(others[j % len(others)])
        search[box] = feat[:, None, None] + noise * torch.randn(4, patch, patch, generator=generator)
        if j == 0:
            mask[box[1:]] = True
    target = red_vertical[:, None, None].expand(4, patch, patch).clone()
    return search, target, mask
