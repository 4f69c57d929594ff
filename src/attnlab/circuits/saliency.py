"""Paper 10 (NormGrad): saliency of each token (or image patch) from an activation and its gradient.

At a hook point with activation ``a [B, T, ...]`` and gradient ``g = ∂L/∂a``, location ``u``'s
saliency is

    NormGrad:            ‖g_u‖ · ‖a_u‖
    selective NormGrad:  ‖max(0, a_u ⊙ g_u)‖

with norms over everything after ``T`` (channels; ``attn.z``'s heads and head dims together).
``‖g_u‖ · ‖a_u‖ = ‖g_u a_uᵀ‖_F`` is the norm of the weight gradient at ``u`` of a 1×1 convolution
(a Linear over channels) with identity weight inserted at the point: the paper's reading of the
score, and the test's reference. In a ViT a patch is a token: reshape ``[B, T]`` to the patch grid.

:func:`pair_saliency` scores every layer's tokens on prompt pairs' clean prompts, explaining the
logit difference ``logit[answer] − logit[wrong]`` at the last position (what ``attnlab circuit
--method saliency`` runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.circuits import metrics as M
from attnlab.circuits.pairs import Pairs
from attnlab.models.graph import _resolve, intervene

__all__ = ["PairSaliency", "normgrad", "normgrad_variants", "pair_saliency"]


def normgrad(model: nn.Module, point: str, loss: Callable[[], Tensor], *, selective: bool = False) -> Tensor:
    """NormGrad saliency of every location of hook point ``point``: ``[B, T]``.

    Paper: 10 (NormGrad saliency).
    Shapes: the point's activation ``[B, T, ...]`` -> ``[B, T]``.

    Args:
        model: a model with a hook graph (``attnlab.hook_points``).
        point: one hook point with a token axis, e.g. ``layers.3.resid_post`` or ``layers.3.attn.z``
            (not ``attn.probs``, which is streamed in chunks).
        loss: runs the model and returns the scalar to explain (a loss, a logit, a log-probability);
            called once, with gradients on.
        selective: the selective variant ``‖max(0, a ⊙ g)‖``.

    Example:
        >>> from attnlab.models.tiny import TinyTransformer
        >>> model = TinyTransformer(11, dim=16, heads=2, layers=2)
        >>> ids = torch.randint(0, 11, (1, 6))
        >>> normgrad(model, "layers.1.resid_pre", lambda: model(ids)[0, -1, 3]).shape
        torch.Size([1, 6])
    """
    plain, sel = normgrad_variants(model, point, loss)
    return sel if selective else plain


def normgrad_variants(model: nn.Module, point: str, loss: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """Both NormGrad variants from one backward pass: ``(normgrad [B, T], selective [B, T])`` (arguments as :func:`normgrad`).

    Paper: 10 (NormGrad saliency).
    """
    if not isinstance(point, str) or point.endswith(".probs") or "*" in point:
        raise ValueError(f"normgrad reads one hook point with a token axis (e.g. 'layers.3.resid_post'), got {point!r}")
    seen: list[Tensor] = []

    def keep(x: Tensor, name: str) -> Tensor:
        seen.append(x.detach().requires_grad_())  # a leaf with the same values: the pass runs on from it, and ∂L/∂a exists
        return seen[-1]  # even when no parameter or input requires gradients

    with torch.enable_grad(), M.weights_frozen(model), intervene(model, {point: keep}):
        value = loss()
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss must return a scalar tensor, got {type(value).__name__} {getattr(value, 'shape', '')}")
        if len(seen) != 1:
            raise ValueError(f"loss must run the model once: {point} was reached {len(seen)} times")
        (a,) = seen
        if not value.requires_grad:
            raise ValueError(f"loss does not depend on {point}: return a value computed from this model's run")
        (g,) = torch.autograd.grad(value, a)
    a, g = a.detach().flatten(2), g.flatten(2)  # [B, T, F]
    return g.norm(dim=-1) * a.norm(dim=-1), (a * g).clamp_min(0).norm(dim=-1)  # [B, T] each


@dataclass
class PairSaliency:
    """NormGrad of every token at every point, the mean over pairs.

    Attributes:
        rows: the points, in order ``[P]`` (e.g. ``layers.0.resid_pre``, ...).
        normgrad, selective: ``[P][T]`` per variant.
        logit_diff: the mean logit difference explained.
    """

    rows: list[str]
    normgrad: list[list[float]]
    selective: list[list[float]]
    logit_diff: float


def pair_saliency(
    model: nn.Module,
    pairs: Pairs,
    points: str | list[str] = "layers.*.resid_pre",
    *,
    batch_size: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
) -> PairSaliency:
    """NormGrad (both variants) of each token at each point, explaining the clean prompts' logit difference; means over pairs.

    Paper: 10 (NormGrad saliency).
    Shapes: ``[P points, T tokens]`` per variant; the pairs need one token length.

    Example:
        >>> from attnlab.models.tiny import TinyTransformer
        >>> from attnlab.circuits.pairs import induction_pairs
        >>> model = TinyTransformer(20, dim=16, heads=2, layers=2).eval()
        >>> s = pair_saliency(model, induction_pairs(3, length=4, vocab_size=20))
        >>> s.rows, len(s.normgrad[0])
        (['layers.0.resid_pre', 'layers.1.resid_pre'], 9)
    """
    if len(pairs.lengths()) > 1:
        raise ValueError(f"saliency per position needs pairs of one token length, got lengths {pairs.lengths()}: use pairs of one template")
    names = _resolve(model, points)
    batches = list(pairs.batches(batch_size))
    plain: dict[str, Tensor] = {}  # point -> [T], summed over pairs
    selective: dict[str, Tensor] = {}
    diffs: list[Tensor] = []  # [B] per batch, from the first point's passes
    for k, name in enumerate(names):
        for clean, _, answer, wrong in batches:

            def loss(clean=clean, answer=answer, wrong=wrong, first=k == 0):
                d = M.logit_diff(M.logits_of(model, clean, last=True), answer, wrong)  # [B]
                if first:
                    diffs.append(d.detach())
                return d.sum()  # each prompt's gradient is its own: the batch's sum

            a, b = normgrad_variants(model, name, loss)  # [B, T] each
            plain[name] = plain.get(name, 0) + a.sum(0)
            selective[name] = selective.get(name, 0) + b.sum(0)
        if progress:
            progress(f"NormGrad at {name}", k + 1, len(names))
    n = len(pairs)
    mean = lambda sums: [(sums[p] / n).tolist() for p in names]  # noqa: E731
    return PairSaliency(names, mean(plain), mean(selective), float(torch.cat(diffs).sum()) / n)
