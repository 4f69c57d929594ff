"""Paper 2: the Tensor Brain's subject–predicate–object decoder, reading a triple out of a cognitive state.

In the Tensor Brain a representation layer holds the cognitive brain state ``q`` and an index
layer holds one unit per concept. Each index unit's embedding ``a_i`` is used in both
directions: bottom-up, the index layer's distribution is ``softmax(A q)``; top-down, the chosen
concept's embedding is written back into the state. A triple is decoded one index at a time:

    p(s | q)       = softmax(A h₀),   h₀ = q
    p(p | s, q)    = softmax(B h₁),   h₁ = tanh(h₀ + a_s)
    p(o | s, p, q) = softmax(A h₂),   h₂ = tanh(h₁ + b_p)

(``A`` entity embeddings, shared by subject and object; ``B`` predicate embeddings). Trained on
the triples of a knowledge graph, the object step answers link-prediction queries ``(s, p, ?)``.
:func:`synthetic_kg` draws the check's graph: triples of a random low-rank (RESCAL-like) score,
so that held-out triples follow from the observed ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.operators import register

__all__ = ["SPODecoder", "filtered_mrr", "synthetic_kg"]


@register("spo_decoder", paper="2")
class SPODecoder(nn.Module):
    """Decode a (subject, predicate, object) triple from a cognitive state, one index layer at a time.

    Paper: 2, The Tensor Brain.

    Args:
        entities: number of entity index units ``E``.
        predicates: number of predicate index units ``P``.
        dim: width ``D`` of the representation layer (default 32).

    Shapes:
        q ``[B, D]``, s, p, o ``[B]`` (long) → ``log p(s, p, o | q)`` ``[B]``;
        :meth:`subject_logits` ``[B, E]``, :meth:`predicate_logits` ``[B, P]``, :meth:`object_logits` ``[B, E]``.

    Example:
        >>> m = SPODecoder(50, 4)
        >>> q = m.state.expand(3, -1)
        >>> m.object_logits(q, torch.tensor([0, 1, 2]), torch.tensor([3, 3, 0])).shape
        torch.Size([3, 50])
    """

    def __init__(self, entities: int, predicates: int, *, dim: int = 32):
        super().__init__()
        for name, v in (("entities", entities), ("predicates", predicates), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        self.entities, self.predicates, self.dim = entities, predicates, dim
        self.A = nn.Parameter(torch.randn(entities, dim) / dim**0.5)  # entity index embeddings
        self.B = nn.Parameter(torch.randn(predicates, dim) / dim**0.5)  # predicate index embeddings
        self.state = nn.Parameter(torch.zeros(1, dim))  # a learned q for semantic memory (no episode)

    def _index(self, name: str, i: Tensor, n: int, batch: int) -> Tensor:
        if i.dtype != torch.long or i.shape != (batch,) or bool(((i < 0) | (i >= n)).any()):
            raise ValueError(f"{name} must be a long tensor [B] = [{batch}] of indices in [0, {n}), got {i.dtype} shape {tuple(i.shape)}")
        return i

    def _check_q(self, q: Tensor) -> Tensor:
        if q.dim() != 2 or q.shape[-1] != self.dim:
            raise ValueError(f"q must be [B, D] with D={self.dim}, got shape {tuple(q.shape)}: expand self.state for semantic memory")
        return q

    def subject_logits(self, q: Tensor) -> Tensor:
        """``A q`` ``[B, E]``."""
        return self._check_q(q) @ self.A.T

    def predicate_logits(self, q: Tensor, s: Tensor) -> Tensor:
        """``B tanh(q + a_s)`` ``[B, P]``."""
        h1 = torch.tanh(self._check_q(q) + self.A[self._index("s", s, self.entities, q.shape[0])])  # (B, D)
        return h1 @ self.B.T

    def object_logits(self, q: Tensor, s: Tensor, p: Tensor) -> Tensor:
        """``A tanh(tanh(q + a_s) + b_p)`` ``[B, E]``."""
        h1 = torch.tanh(self._check_q(q) + self.A[self._index("s", s, self.entities, q.shape[0])])  # (B, D)
        h2 = torch.tanh(h1 + self.B[self._index("p", p, self.predicates, q.shape[0])])  # (B, D)
        return h2 @ self.A.T

    def forward(self, q: Tensor, s: Tensor, p: Tensor, o: Tensor) -> Tensor:
        o = self._index("o", o, self.entities, q.shape[0])
        ls = self.subject_logits(q).log_softmax(-1).gather(-1, s[:, None])  # (B, 1)
        lp = self.predicate_logits(q, s).log_softmax(-1).gather(-1, p[:, None])
        lo = self.object_logits(q, s, p).log_softmax(-1).gather(-1, o[:, None])
        return (ls + lp + lo).squeeze(-1)  # (B,)


def synthetic_kg(
    *, entities: int = 50, predicates: int = 4, triples: int = 500, rank: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """A knowledge graph's ``triples`` highest-scoring triples under a random rank-``rank`` RESCAL score ``u_sᵀ R_p u_o``.

    Returns:
        ``[triples, 3]`` long (subject, predicate, object), in random order.
    """
    if isinstance(triples, bool) or not isinstance(triples, int) or not 0 < triples <= entities * entities * predicates:
        raise ValueError(
            f"triples must be an integer in [1, entities² · predicates = {entities * entities * predicates}], got triples={triples!r}"
        )
    u = nn.functional.normalize(torch.randn(entities, rank, generator=generator), dim=-1)  # (E, r) unit vectors: no hub entities
    R = torch.randn(predicates, rank, rank, generator=generator)  # (P, r, r)
    score = torch.einsum("sa,pab,ob->spo", u, R, u)  # (E, P, E)
    top = score.flatten().topk(triples).indices
    spo = torch.stack(torch.unravel_index(top, score.shape), -1)  # (triples, 3)
    return spo[torch.randperm(triples, generator=generator)]


def filtered_mrr(object_logits: Tensor, queries: Tensor, known: Tensor) -> float:
    """Mean reciprocal rank of each query's true object, the other known objects of its ``(s, p)`` left out (the filtered setting).

    Shapes:
        object_logits ``[n, E]`` scores of every entity as the object of query ``i``; queries ``[n, 3]``
        (s, p, o); known ``[m, 3]`` every true triple (train and test).
    """
    if object_logits.dim() != 2 or queries.shape != (object_logits.shape[0], 3):
        raise ValueError(f"object_logits must be [n, E] and queries [n, 3], got {tuple(object_logits.shape)} and {tuple(queries.shape)}")
    by_query: dict[tuple[int, int], set[int]] = {}
    for s, p, o in known.tolist():
        by_query.setdefault((s, p), set()).add(o)
    rr = []
    for row, (s, p, o) in zip(object_logits, queries.tolist()):
        others = [x for x in by_query.get((s, p), ()) if x != o]
        row = row.clone()
        row[others] = float("-inf")
        rr.append(1.0 / (1 + int((row > row[o]).sum())))
    return sum(rr) / len(rr)
