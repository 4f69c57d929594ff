"""Region masks given at an image's resolution, sampled at an attention site's query grid (diffusion models)."""

from __future__ import annotations

from torch import Tensor

from attnlab.core.site import Site


def at_grid(regions: Tensor, site: Site, what: str) -> Tensor:
    """``regions`` ``[..., H, W]`` sampled at ``site.grid = (h, w)``, flattened row by row: ``[..., h*w]``.

    Each grid cell takes the value at its centre pixel (``H / h`` must equal ``W / w``, a whole
    number), so boolean masks stay boolean and integer labels stay labels.

    Raises:
        ValueError: the site has no grid (not an image's attention), or the regions do not tile it.
    """
    if site.grid is None:
        raise ValueError(
            f"{what}: site {site.name} has no query grid: region masks apply at a diffusion model's sites (attnlab.models.diffusers.instrument)"
        )
    H, W = regions.shape[-2:]
    h, w = site.grid
    f = H // h
    if f < 1 or H != f * h or W != f * w:
        raise ValueError(
            f"{what}: a region mask of size {(H, W)} does not fit site {site.name}'s grid {(h, w)}: "
            "give the masks at the latent's resolution (the model input's height and width)"
        )
    return regions[..., f // 2 :: f, f // 2 :: f].flatten(-2)  # [..., h*w]
