"""Paper 54: Uni-Perceiver's scoring, one shared encoder for inputs and candidate targets, compared by cosine.

Uni-Perceiver casts every task as matching: the input ``x`` and each candidate target ``y``
(a class name, a caption, a token) go through the same encoder ``f``, and

    p(y | x) = exp(cos(f(x), f(y)) / τ) / Σ_{y'} exp(cos(f(x), f(y')) / τ)

over the task's candidate set, with a learnable temperature ``τ``. Because labels are encoded
rather than indexed, a model trained on some label sets scores a new one zero-shot: give it the
new candidates. :func:`concept_bags` draws the check's data: classes are combinations of
attribute tokens, inputs are noisy bags of their class's attributes, candidates name a class
by its attributes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnlab.operators import register

__all__ = ["CandidateScorer", "concept_bags"]


@register("candidate_scorer", paper="54")
class CandidateScorer(nn.Module):
    """Score candidates for each input by the cosine of their shared-encoder features over ``τ``.

    Paper: 54, Uni-Perceiver.

    Args:
        encoder: the shared encoder ``f``, mapping an input batch to ``[B, D]`` features; inputs
            and candidates must be in a form it takes (e.g. token ids ``[B, L]``).
        tau: initial temperature (default 0.07, CLIP's initial value; the paper learns ``τ``).
        learn_tau: learn ``log τ`` (default True).

    Shapes:
        x ``[B, ...]``, candidates ``[K, ...]`` (shared by the batch) → logits ``[B, K]``
        (``log_softmax`` of them is ``log p(y | x)``).

    Example:
        >>> m = CandidateScorer(nn.EmbeddingBag(100, 16))
        >>> m(torch.randint(100, (4, 7)), torch.randint(100, (10, 3))).shape
        torch.Size([4, 10])
    """

    def __init__(self, encoder: nn.Module, *, tau: float = 0.07, learn_tau: bool = True):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be an nn.Module mapping a batch to [B, D] features, got {type(encoder).__name__}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"tau must be a positive temperature, got tau={tau!r}")
        self.encoder = encoder
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau)), requires_grad=learn_tau)

    def _encode(self, name: str, z) -> Tensor:
        f = self.encoder(z)
        if f.dim() != 2:
            raise ValueError(f"the encoder must return [B, D] features, got shape {tuple(f.shape)} for {name}: pool over the sequence")
        return F.normalize(f, dim=-1)

    def forward(self, x, candidates) -> Tensor:
        fx, fy = self._encode("x", x), self._encode("candidates", candidates)  # (B, D), (K, D)
        return fx @ fy.T / self.log_tau.exp()  # (B, K)


def concept_bags(
    classes: Tensor, n: int, *, attributes: int = 24, per_class: int = 3, noise_tokens: int = 3, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs and candidates of a planted concept task.

    Class ``c`` is the attribute set ``{(5c + 7j) mod attributes : j < per_class}`` (distinct sets
    for ``c < attributes``); its candidate names them with "text" tokens ``a`` in
    ``[0, attributes)``; an input of class ``c`` shows them as "image" tokens ``attributes + a``,
    plus ``noise_tokens`` random image tokens, shuffled. The two vocabularies are disjoint, so only
    a trained shared encoder matches an input to its candidate.

    Returns:
        inputs ``[n, per_class + noise_tokens]`` (ids in ``[attributes, 2·attributes)``), labels
        ``[n]`` (positions in ``classes``), candidates ``[len(classes), per_class]`` (ids in ``[0, attributes)``).
    """
    if classes.dim() != 1 or classes.dtype != torch.long or bool((classes < 0).any()) or bool((classes >= attributes).any()):
        raise ValueError(f"classes must be a 1-D long tensor of ids in [0, {attributes}), got {classes.dtype} {tuple(classes.shape)}")
    offsets = torch.arange(per_class) * 7  # (per_class,)
    candidates = (classes[:, None] * 5 + offsets) % attributes  # (K, per_class)
    labels = torch.randint(len(classes), (n,), generator=generator)  # (n,)
    noise = torch.randint(attributes, (n, noise_tokens), generator=generator)
    tokens = attributes + torch.cat([candidates[labels], noise], 1)  # (n, L) image tokens
    order = torch.rand(tokens.shape, generator=generator).argsort(1)
    return tokens.gather(1, order), labels, candidates
