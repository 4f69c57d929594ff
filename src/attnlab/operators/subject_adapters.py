"""Paper 62: per-subject shallow adapters into one shared decoder, for learning across subjects' brains.

Recordings from different subjects have different sizes (voxel counts) and layouts, but what they
encode is shared. "See through their minds" gives each subject ``s`` a shallow linear adapter into a
common space and trains one decoder on all subjects:

    h = A_s x_s + b_s ∈ R^C,    ŷ = Decoder(h),

so a new subject needs only a new adapter: fit it on a little data with the decoder frozen
(:meth:`SubjectAdapters.add_subject`, :meth:`SubjectAdapters.shared`). The default decoder is an MLP
``C → hidden → out_dim`` (GELU); any module ``[B, C] → [B, ...]`` can be given instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["SubjectAdapters"]


@register("subject_adapters", paper="62")
class SubjectAdapters(nn.Module):
    """One linear adapter per subject into a shared width, then a decoder shared by every subject.

    Paper: 62, See Through Their Minds: Learning Transferable Neural Representation from Cross-Subject fMRI.

    Args:
        in_dims: input width of each subject (voxels), in subject order.
        dim: width ``C`` of the shared space.
        out_dim: decoder output width (ignored when ``decoder`` is given).
        hidden: hidden units of the default decoder.
        decoder: a module ``[B, C] → [B, ...]`` to use as the shared decoder instead of the default MLP.

    Shapes:
        x ``[B, in_dims[subject]]``, subject an int → decoder output, ``[B, out_dim]`` by default.

    Example:
        >>> import torch
        >>> m = SubjectAdapters([100, 80], dim=16, out_dim=5)
        >>> m(torch.randn(3, 80), subject=1).shape
        torch.Size([3, 5])
    """

    def __init__(self, in_dims: list[int], dim: int, out_dim: int = 1, *, hidden: int = 256, decoder: nn.Module | None = None):
        super().__init__()
        for name, v in {"dim": dim, "out_dim": out_dim, "hidden": hidden}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        if len(in_dims) == 0:
            raise ValueError("in_dims must list at least one subject's input width, got an empty list")
        self.dim = dim
        self.adapters = nn.ModuleList()
        for d in in_dims:
            self.add_subject(d)
        self.decoder = decoder if decoder is not None else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def add_subject(self, in_dim: int) -> int:
        """Add a fresh adapter for a new subject of width ``in_dim``; returns its subject index."""
        if not isinstance(in_dim, int) or in_dim <= 0:
            raise ValueError(f"a subject's input width must be a positive integer, got in_dim={in_dim!r}")
        self.adapters.append(nn.Linear(in_dim, self.dim))
        return len(self.adapters) - 1

    def shared(self) -> list[nn.Parameter]:
        """The decoder's parameters (freeze them to fit a new subject's adapter alone)."""
        return list(self.decoder.parameters())

    def forward(self, x: Tensor, subject: int) -> Tensor:
        if not isinstance(subject, int) or not 0 <= subject < len(self.adapters):
            raise ValueError(f"subject must be an index in [0, {len(self.adapters)}), got subject={subject!r}; add_subject makes new ones")
        adapter = self.adapters[subject]
        if x.dim() != 2 or x.shape[-1] != adapter.in_features:
            raise ValueError(f"subject {subject} takes x of shape [B, {adapter.in_features}], got shape {tuple(x.shape)}")
        return self.decoder(adapter(x))  # (B, in_s) -> (B, C) -> (B, ...)
