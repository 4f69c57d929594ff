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


def normgrad_variants(model: nn.Module, point: str | list[str], loss: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """Both NormGrad variants from one backward pass: ``(normgrad [B, T], selective [B, T])`` (arguments as :func:`normgrad`).

    Several points (a list) are scored in the same pass: ``[P, B, T]`` each, in their order.

    Paper: 10 (NormGrad saliency).
    """
    points = [point] if isinstance(point, str) else list(point)
    for p in points:
        if not isinstance(p, str) or p.endswith(".probs") or "*" in p:
            raise ValueError(f"normgrad reads one hook point with a token axis (e.g. 'layers.3.resid_post'), got {p!r}")
    acts: dict[str, list[Tensor]] = {p: [] for p in points}
    zeros: dict[str, Tensor] = {}

    def add_zero(x: Tensor, name: str) -> Tensor:  # ∂L/∂zero = ∂L/∂a, and the pass keeps its graph through every point
        acts[name].append(x.detach())
        zeros[name] = torch.zeros_like(x, requires_grad=True)
        return x + zeros[name]

    with torch.enable_grad(), M.weights_frozen(model), intervene(model, dict.fromkeys(points, add_zero)):
        value = loss()
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss must return a scalar tensor, got {type(value).__name__} {getattr(value, 'shape', '')}")
        for p in points:
            if len(acts[p]) != 1:
                raise ValueError(f"loss must run the model once: {p} was reached {len(acts[p])} times")
        grads = torch.autograd.grad(value, [zeros[p] for p in points], allow_unused=True) if value.requires_grad else [None]
        for p, g in zip(points, grads):
            if g is None:
                raise ValueError(f"loss does not depend on {p}: return a value computed from this model's run")
    out = []
    for p, g in zip(points, grads, strict=True):
        a, g = acts[p][0].flatten(2), g.flatten(2)  # [B, T, F]
        out.append((g.norm(dim=-1) * a.norm(dim=-1), (a * g).clamp_min(0).norm(dim=-1)))  # [B, T] each
    if isinstance(point, str):
        return out[0]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])  # [P, B, T] each


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
        (['layers.0.resid_pre', 'layers.1.resid_pre'], 7)
    """
    if len(pairs.lengths()) > 1:
        raise ValueError(f"saliency per position needs pairs of one token length, got lengths {pairs.lengths()}: use pairs of one template")
    names = _resolve(model, points)
    batches = list(pairs.batches(batch_size))
    plain = selective = 0  # [P, T], summed over pairs
    diffs: list[Tensor] = []  # [B] per batch
    for b, (clean, _, answer, wrong) in enumerate(batches):

        def loss(clean=clean, answer=answer, wrong=wrong):
            d = M.logit_diff(M.logits_of(model, clean, last=True), answer, wrong)  # [B]
            diffs.append(d.detach())
            return d.sum()  # each prompt's gradient is its own: the batch's sum

        a, s = normgrad_variants(model, names, loss)  # [P, B, T] each: every point from one backward pass
        plain, selective = plain + a.sum(1), selective + s.sum(1)
        if progress:
            progress("NormGrad, batch of pairs", b + 1, len(batches))
    n = len(pairs)
    return PairSaliency(names, (plain / n).tolist(), (selective / n).tolist(), float(torch.cat(diffs).sum()) / n)
