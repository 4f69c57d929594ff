"""Paper 3: the sequence classes of Scan and Snap (Tian, Wang, Chen, Du 2023).

The paper's data model: a sequence is ``T-1`` contextual tokens and a last (query) token
``x_T = m``; the model predicts the next token ``x_{T+1} = n``. A sequence class is fixed by ``n``:
the query is determined by it, ``m = ψ(n)`` (here ``ψ(n) = n mod queries``, so several next
tokens share a query), and the contextual tokens are drawn i.i.d. from ``P(l | n)``. Two kinds of
contextual tokens matter to the theory:

- **distinct** tokens, with ``P(l | n) > 0`` for one class only (here ``distinct`` per class;
  within a class their frequencies follow ``(j+1)^-distinct_alpha``, to order co-occurrence);
- **common** tokens, shared by every class (here ``common`` of them, drawn with probability
  ``p_common``, uniformly).

The query alone does not determine ``n``: a 1-layer model must attend from the query to the
distinct tokens ("scan") and the theory says it ends with a sparse but not one-hot attention
("snap"). Tokens: distinct ``[0, next·distinct)`` (class ``n`` owns a block), common, queries,
then next tokens. The only target is ``n``, at the last position.
"""

from __future__ import annotations

import torch

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["ScanSnap"]


@register("scan_snap", paper="3")
class ScanSnap(Task):
    """Predict the next token from a query and a bag of distinct and common context tokens.

    Paper: 3 (Scan and Snap: understanding training dynamics and token composition in 1-layer
    transformer).
    Shapes: ``inputs, targets, mask [B, seq_len]`` (one target, at the last position);
    ``extra["distinct"], extra["common"] [B, seq_len]`` bool (the kinds of the contextual tokens),
    ``extra["next"], extra["query"] [B]`` (``n`` and ``m = ψ(n)`` as token ids).

    Args:
        next_tokens: sequence classes ``n`` (default 16).
        queries: distinct query tokens; ``ψ(n) = n mod queries`` (default 4).
        distinct: distinct tokens per class (default 4).
        common: common tokens shared by all classes (default 16).
        p_common: probability that a contextual token is common (default 0.5).
        distinct_alpha: within a class, distinct token ``j`` has weight ``(j+1)^-distinct_alpha``
            (default 0: uniform).
        seq_len: ``T``, contextual tokens plus the query (default 32).

    Example:
        >>> task = ScanSnap()
        >>> b = task.batch(2, "train", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, b.mask[:, -1].tolist()
        (torch.Size([2, 32]), [True, True])
    """

    def __init__(
        self,
        *,
        next_tokens: int = 16,
        queries: int = 4,
        distinct: int = 4,
        common: int = 16,
        p_common: float = 0.5,
        distinct_alpha: float = 0.0,
        seq_len: int = 32,
    ):
        K = check_int("next_tokens", next_tokens, 2)
        self.next_tokens, self.queries = K, check_int("queries", queries, 1, K - 1)
        self.distinct, self.common = check_int("distinct", distinct, 1), check_int("common", common, 1)
        if isinstance(p_common, bool) or not isinstance(p_common, (int, float)) or not 0 <= p_common < 1:
            raise ValueError(f"p_common must be in [0, 1) (some distinct tokens are needed), got p_common={p_common!r}")
        if isinstance(distinct_alpha, bool) or not isinstance(distinct_alpha, (int, float)) or distinct_alpha < 0:
            raise ValueError(f"distinct_alpha must be a non-negative exponent, got distinct_alpha={distinct_alpha!r}")
        self.p_common, self.distinct_alpha = float(p_common), float(distinct_alpha)
        self.seq_len = check_int("seq_len", seq_len, 2)
        self.common_start = K * distinct
        self.query_start = self.common_start + common
        self.next_start = self.query_start + self.queries
        self.vocab_size = self.next_start + K
        w = torch.arange(1, distinct + 1, dtype=torch.float64) ** -self.distinct_alpha
        self.distinct_probs = w / w.sum()  # (distinct,), the same shape of P(l | n) in every class

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences; train and test are the same classes on different random streams."""
        B, T, D = check_int("n", n, 1), self.seq_len, self.distinct
        g = split_generator(generator, split, self.splits())
        nxt = torch.randint(self.next_tokens, (B,), generator=g)  # (B,) class n
        is_common = torch.rand(B, T - 1, generator=g) < self.p_common
        j = torch.multinomial(self.distinct_probs.expand(B, -1), T - 1, replacement=True, generator=g)  # (B, T-1)
        common = self.common_start + torch.randint(self.common, (B, T - 1), generator=g)
        context = torch.where(is_common, common, nxt[:, None] * D + j)  # (B, T-1)
        query = nxt % self.queries  # ψ(n)
        inputs = torch.cat([context, (self.query_start + query)[:, None]], 1)  # (B, T)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = self.next_start + nxt
        last = torch.zeros(B, 1, dtype=torch.bool)
        extra = {
            "distinct": torch.cat([~is_common, last], 1),
            "common": torch.cat([is_common, last], 1),
            "next": self.next_start + nxt,
            "query": self.query_start + query,
        }
        return Batch(inputs, targets, extra=extra)
