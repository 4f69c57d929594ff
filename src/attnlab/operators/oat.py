"""Paper 24: OAT, a transformer that predicts the next fixated object from object tokens and the scanpath so far.

The object-level attention transformer models goal-directed visual search at the level of
objects: every object of the scene is a token, its appearance features plus a 2-D positional
encoding of its centre,

    tok_i = W f_i + PE(x_i, y_i),    PE = [sin(π 2^k x), cos(π 2^k x)]_k ⊕ [sin(π 2^k y), cos(π 2^k y)]_k,

the object tokens are encoded together, and a causal decoder reads the search target's token
followed by the tokens of the objects fixated so far and points at the next fixated object:
``p(next = i) = softmax_i(h_t · tok_i / √C)``. :func:`search_scanpaths` is the check's
simulated searcher, and :func:`saliency_baseline` the bottom-up model it must beat.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["OAT", "object_position_encoding", "saliency_baseline", "search_scanpaths"]


@register("object_position_encoding", paper="24")
def object_position_encoding(pos: Tensor, dim: int) -> Tensor:
    """2-D sinusoidal encoding of object centres in ``[0, 1]²``: ``dim/2`` features for x, then ``dim/2`` for y.

    Paper: 24, OAT (Object-level Attention Transformer).

    Shapes:
        pos ``[..., 2]`` (x, y) → ``[..., dim]``; ``dim`` a multiple of 4, frequencies ``π 2^k`` for ``k < dim/4``.

    Example:
        >>> object_position_encoding(torch.rand(2, 5, 2), 16).shape
        torch.Size([2, 5, 16])
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4 (sin and cos for x and y), got dim={dim!r}")
    if pos.shape[-1] != 2:
        raise ValueError(f"pos must be [..., 2] object centres (x, y), got shape {tuple(pos.shape)}")
    freq = math.pi * 2.0 ** torch.arange(dim // 4, dtype=pos.dtype, device=pos.device)  # (dim/4,)
    ang = pos[..., None] * freq  # (..., 2, dim/4)
    return torch.cat([ang.sin(), ang.cos()], -1).flatten(-2)  # (..., dim): x's sin, cos then y's


@register("oat", paper="24")
class OAT(nn.Module):
    """Object tokens with 2-D positions, a causal decoder over the scanpath, a pointer to the next fixated object.

    Paper: 24, OAT (Object-level Attention Transformer).

    Args:
        features: width ``F`` of each object's (and the target's) appearance features.
        dim: model width ``C`` (a multiple of 4 and of ``heads``; default 32).
        heads: attention heads (default 4).
        layers: encoder and decoder layers (default 2 each).

    Shapes:
        objects ``[B, N, F]``, positions ``[B, N, 2]`` in ``[0, 1]``, target ``[B, F]``, history ``[B, T]``
        (indices of the fixated objects, ``T ≥ 0``) → logits ``[B, T+1, N]``: row ``t`` scores the
        object fixated after the first ``t`` fixations.

    Example:
        >>> m = OAT(6)
        >>> m(torch.randn(2, 9, 6), torch.rand(2, 9, 2), torch.randn(2, 6), torch.tensor([[3, 1], [0, 2]])).shape
        torch.Size([2, 3, 9])
    """

    def __init__(self, features: int, *, dim: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        for name, v in (("features", features), ("dim", dim), ("heads", heads), ("layers", layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        if dim % 4 or dim % heads:
            raise ValueError(f"dim must be a multiple of 4 and of heads, got dim={dim}, heads={heads}")
        self.features, self.dim = features, dim
        self.embed, self.target = nn.Linear(features, dim), nn.Linear(features, dim)

        def layer(cls):
            return cls(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), layers)

    def forward(self, objects: Tensor, positions: Tensor, target: Tensor, history: Tensor) -> Tensor:
        if objects.dim() != 3 or objects.shape[-1] != self.features:
            raise ValueError(f"objects must be [B, N, F] with F={self.features}, got shape {tuple(objects.shape)}")
        B, N, _ = objects.shape
        if positions.shape != (B, N, 2) or target.shape != (B, self.features):
            raise ValueError(
                f"positions must be [B, N, 2] = {(B, N, 2)} and target [B, F] = {(B, self.features)}, got {tuple(positions.shape)} and {tuple(target.shape)}"
            )
        if history.dim() != 2 or history.shape[0] != B or history.dtype != torch.long or bool(((history < 0) | (history >= N)).any()):
            raise ValueError(
                f"history must be a long tensor [B, T] of object indices in [0, {N}), got {history.dtype} {tuple(history.shape)}"
            )
        tok = self.encoder(self.embed(objects) + object_position_encoding(positions, self.dim))  # (B, N, C)
        fixated = tok.gather(1, history[..., None].expand(-1, -1, self.dim))  # (B, T, C)
        seq = torch.cat([self.target(target)[:, None], fixated], 1)  # (B, T+1, C)
        causal = nn.Transformer.generate_square_subsequent_mask(seq.shape[1], dtype=seq.dtype, device=seq.device)
        h = self.decoder(seq, tok, tgt_mask=causal)  # (B, T+1, C)
        return h @ tok.transpose(1, 2) / math.sqrt(self.dim)  # (B, T+1, N)


def search_scanpaths(
    n: int, *, objects: int = 10, fixations: int = 4, distance_cost: float = 1.5, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Scenes and the scanpaths of a simulated goal-directed searcher.

    Each object has one of 3 colours and one of 3 shapes (features: two one-hots, ``F = 6``) and a
    centre uniform in ``[0, 1]²``; the target is the features of one of the objects. Starting at the
    centre of the scene, the searcher fixates, among the objects not yet fixated, the one that
    maximises (features shared with the target) − ``distance_cost`` × (distance from the current fixation).

    Returns:
        ``objects [n, N, 6]``, ``positions [n, N, 2]``, ``target [n, 6]``, ``scanpath [n, fixations]`` (long).
    """
    if isinstance(fixations, bool) or not isinstance(fixations, int) or not 1 <= fixations <= objects:
        raise ValueError(f"fixations must be an integer in [1, objects={objects}], got fixations={fixations!r}")
    colour, shape = torch.randint(3, (n, objects), generator=generator), torch.randint(3, (n, objects), generator=generator)
    feats = torch.cat([nn.functional.one_hot(colour, 3), nn.functional.one_hot(shape, 3)], -1).float()  # (n, N, 6)
    pos = torch.rand(n, objects, 2, generator=generator)  # (n, N, 2)
    target = feats[torch.arange(n), torch.randint(objects, (n,), generator=generator)]  # (n, 6)
    shared = (feats * target[:, None]).sum(-1)  # (n, N) in {0, 1, 2}
    here, seen, path = torch.full((n, 2), 0.5), torch.zeros(n, objects, dtype=torch.bool), []
    for _ in range(fixations):
        score = shared - distance_cost * (pos - here[:, None]).norm(dim=-1)  # (n, N)
        nxt = score.masked_fill(seen, float("-inf")).argmax(-1)  # (n,)
        path.append(nxt)
        seen[torch.arange(n), nxt] = True
        here = pos[torch.arange(n), nxt]
    return {"objects": feats, "positions": pos, "target": target, "scanpath": torch.stack(path, 1)}


def saliency_baseline(objects: Tensor, history: Tensor) -> Tensor:
    """Bottom-up saliency: score each object by how rare its features are in the scene, fixated ones excluded.

    Shapes:
        objects ``[B, N, F]``, history ``[B, T]`` → scores ``[B, T+1, N]`` (as :class:`OAT`'s logits).
    """
    rarity = -(objects @ objects.mean(1, keepdim=True).transpose(1, 2)).squeeze(-1)  # (B, N): low mean feature overlap = salient
    visited = nn.functional.one_hot(history, objects.shape[1]).cumsum(1) > 0  # (B, T, N): fixated within the first t+1
    visited = torch.cat([torch.zeros_like(visited[:, :1]), visited], 1)  # (B, T+1, N): before fixation t+1
    return rarity[:, None].expand_as(visited).masked_fill(visited, float("-inf"))
