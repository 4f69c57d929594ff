"""Paper 60: topic segmentation with a siamese sentence-pair encoder and three heads.

A document is cut where two consecutive sentences stop sharing a topic. The pair model encodes
each sentence with the same tower (siamese), combines the two codes as in sentence-pair models,

    u = f(a),  v = f(b),  h = [u; v; |u − v|; u ⊙ v],

and trains three heads together: *same topic* (is there no boundary between ``a`` and ``b``: a
logit from ``h``), *topic* (each sentence's topic class: logits from ``u`` and from ``v``) and
*next sentence* (does ``b`` follow ``a`` in the document: a logit from ``h``). The extra heads are
auxiliary supervision for the tower; segmentation reads the same-topic head alone. The tower here
maps a sentence vector (bag of words, a frozen sentence embedding) through ``Linear → tanh``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["PairOutputs", "TopicPairEncoder"]


@dataclass
class PairOutputs:
    """Logits of the three heads: same_topic ``[B]``, topic_a and topic_b ``[B, K]``, next_sentence ``[B]``."""

    same_topic: Tensor
    topic_a: Tensor
    topic_b: Tensor
    next_sentence: Tensor


@register("topic_pair_encoder", paper="60")
class TopicPairEncoder(nn.Module):
    """Siamese sentence-pair encoder with same-topic, topic and next-sentence heads.

    Paper: 60, topic segmentation (multi-task siamese sentence-pair model).

    Args:
        in_dim: width of a sentence vector ``E``.
        dim: width ``C`` of the tower's code.
        topics: number of topic classes ``K``.

    Shapes:
        a, b ``[B, E]`` (sentence ``a`` and the next candidate ``b``) → :class:`PairOutputs`.

    Example:
        >>> m = TopicPairEncoder(in_dim=50, dim=16, topics=4)
        >>> out = m(torch.randn(3, 50), torch.randn(3, 50))
        >>> out.same_topic.shape, out.topic_a.shape
        (torch.Size([3]), torch.Size([3, 4]))
    """

    def __init__(self, in_dim: int, dim: int = 128, topics: int = 2):
        super().__init__()
        for name, v in {"in_dim": in_dim, "dim": dim, "topics": topics}.items():
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        self.in_dim = in_dim
        self.tower = nn.Sequential(nn.Linear(in_dim, dim), nn.Tanh())  # f, shared by both sentences
        self.same_head = nn.Linear(4 * dim, 1)
        self.topic_head = nn.Linear(dim, topics)
        self.next_head = nn.Linear(4 * dim, 1)

    def forward(self, a: Tensor, b: Tensor) -> PairOutputs:
        if a.dim() != 2 or a.shape != b.shape or a.shape[-1] != self.in_dim:
            raise ValueError(f"a and b must both be [B, E] with E={self.in_dim}, got {tuple(a.shape)} and {tuple(b.shape)}")
        u, v = self.tower(a), self.tower(b)  # (B, C) each
        h = torch.cat([u, v, (u - v).abs(), u * v], -1)  # (B, 4C)
        return PairOutputs(self.same_head(h).squeeze(-1), self.topic_head(u), self.topic_head(v), self.next_head(h).squeeze(-1))

    @staticmethod
    def loss(
        out: PairOutputs,
        same: Tensor,
        topic_a: Tensor,
        topic_b: Tensor,
        next_sentence: Tensor,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> Tensor:
        """Weighted sum of the three heads' losses (binary CE, CE on both sentences, binary CE).

        ``same`` and ``next_sentence`` are 0/1 floats ``[B]``, ``topic_a``/``topic_b`` class ids ``[B]``;
        ``weights=(1, 0, 0)`` trains the same-topic head alone.
        """
        if len(weights) != 3 or min(weights) < 0:
            raise ValueError(f"weights must be three non-negative numbers (same topic, topic, next sentence), got weights={weights!r}")
        w_same, w_topic, w_next = weights
        topic = (F.cross_entropy(out.topic_a, topic_a) + F.cross_entropy(out.topic_b, topic_b)) / 2
        return (
            w_same * F.binary_cross_entropy_with_logits(out.same_topic, same)
            + w_topic * topic
            + w_next * F.binary_cross_entropy_with_logits(out.next_sentence, next_sentence)
        )
