"""Paper 41: in-context classification with bursty, Zipfian classes (Reddy 2023), as tokens.

A sequence is ``N`` (item, label) pairs and a query item, ``x1 l1 … xN lN xq``; the target at the
query is its label. ``K`` classes map to ``L`` labels (class ``k`` → label ``k mod L``, Reddy's
assignment) and are drawn with Zipf frequencies ``p(k) ∝ (k+1)^-α``.

- **Items as tokens.** Reddy's items are Gaussian vectors ``μ_k + ε·η``; here class ``k`` has
  ``exemplars`` tokens and an item is one of them, uniformly: the within-class noise. (Unseen tokens
  have no similarity to each other, so a query from a *novel* class repeats one of the exemplars
  its class shows in the context; everywhere else the query exemplar is drawn afresh.)
- **Burstiness** (as in Reddy's code): a bursty sequence holds ``N/B`` classes, ``B`` items each,
  shuffled, and the query's class is one of them, so it appears at least ``B`` times in context
  (the ``N/B`` classes are drawn with replacement, as in Reddy's code). With
  probability ``1 - p_bursty`` (and always when ``B = 0``) the ``N`` context classes and the query
  class are drawn independently.
- **Novel classes** (Reddy's ``p_C``, here ``p_icl``): the fraction of training sequences whose
  classes come from a pool of ``novel_classes`` classes outside the ``K``, with fresh distinct
  labels in every sequence, so the label can only be read from the context. (Bursty with ``B``
  items per class, or ``N/2`` when ``B = 0``.)

Splits: ``train`` and ``test`` (the training mixture); ``in_weights`` (known classes, no burst,
the query's class absent from the context: only memorised class→label maps help);
``in_context`` (classes from a second pool of novel classes never used by ``train``, fresh
labels: only in-context learning helps); ``permuted_labels`` (known classes, bursty, every label
shifted by the same random non-zero offset, so the context contradicts the memorised labels).

Tokens: labels ``[0, L)``, then items ``L + class·exemplars + e`` for the ``K`` classes, the
training pool of novel classes, and the held-out pool.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.tasks import IGNORE, Batch, Task, check_int, register, split_generator

__all__ = ["ICLClassification"]

_SPLITS = ("train", "test", "in_weights", "in_context", "permuted_labels")


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {name}={value!r}")
    return float(value)


@register("icl_classification", paper="41")
class ICLClassification(Task):
    """Few-shot classification of token items: in-context vs in-weights learning.

    Paper: 41 (The mechanistic basis of data dependence and abrupt learning in an in-context
    classification task).
    Shapes: ``inputs, targets, mask [B, 2N+1]`` (one target, at the query); ``extra["classes"]
    [B, N]`` and ``extra["query_class"] [B]`` (global class ids: ``< K`` known, ``≥ K`` novel),
    ``extra["novel"], extra["bursty"] [B]`` bool, ``extra["query_in_context"] [B]`` (how many
    context items share the query's class).

    Args:
        context: ``N`` (item, label) pairs before the query, even (paper: 8).
        classes: ``K`` known classes, a multiple of ``labels`` (default 512).
        labels: ``L`` label tokens (paper: 32).
        burstiness: ``B``, items of the query's class in a bursty context: 0 or a divisor of ``N``
            below ``N`` (paper: 4).
        zipf: exponent ``α`` of the class frequencies (paper: 0, uniform, to 1 and above).
        p_bursty: fraction of bursty sequences among known-class ones (paper's ``p_B``: 1).
        p_icl: fraction of training sequences from novel classes with fresh labels (``p_C``: 0).
        exemplars: tokens per class, the within-class noise (default 4).
        novel_classes: size of each of the two pools of novel classes (default 64).

    Example:
        >>> task = ICLClassification()
        >>> b = task.batch(2, "in_context", torch.Generator().manual_seed(0))
        >>> b.inputs.shape, b.mask.nonzero()[:, 1].tolist()
        (torch.Size([2, 17]), [16, 16])
    """

    def __init__(
        self,
        *,
        context: int = 8,
        classes: int = 512,
        labels: int = 32,
        burstiness: int = 4,
        zipf: float = 0.0,
        p_bursty: float = 1.0,
        p_icl: float = 0.0,
        exemplars: int = 4,
        novel_classes: int = 64,
    ):
        N, L = check_int("context", context, 2), check_int("labels", labels, 2)
        if N % 2:
            raise ValueError(f"context must be even (novel classes come in bursts of N/2 when B = 0), got context={N}")
        K = check_int("classes", classes, L)
        if K % L:
            raise ValueError(f"classes must be a multiple of labels (class k has label k mod L), got classes={K}, labels={L}")
        check_int("burstiness", burstiness, 0, N - 1)
        if burstiness and N % burstiness:
            divisors = [b for b in range(1, N) if N % b == 0]
            raise ValueError(f"burstiness must be 0 or a divisor of context below it {divisors}, got burstiness={burstiness}")
        if isinstance(zipf, bool) or not isinstance(zipf, (int, float)) or zipf < 0:
            raise ValueError(f"zipf must be a non-negative exponent, got zipf={zipf!r}")
        self.burst_novel = burstiness or N // 2  # items per class in novel-class (bursty) sequences
        check_int("novel_classes", novel_classes, N // self.burst_novel)
        if N // self.burst_novel > L:
            raise ValueError(f"a novel-class context needs N/B <= labels distinct labels, got N/B={N // self.burst_novel}, labels={L}")
        self.context, self.classes, self.labels, self.burstiness = N, K, L, burstiness
        self.zipf, self.p_bursty, self.p_icl = float(zipf), _fraction("p_bursty", p_bursty), _fraction("p_icl", p_icl)
        self.exemplars, self.novel_classes = check_int("exemplars", exemplars, 1), novel_classes
        self.seq_len = 2 * N + 1
        self.vocab_size = L + (K + 2 * novel_classes) * exemplars
        rank = torch.arange(1, K + 1, dtype=torch.float64)
        self.class_probs = rank**-self.zipf / (rank**-self.zipf).sum()  # (K,), p(k) ∝ (k+1)^-α

    def splits(self) -> tuple[str, ...]:
        return _SPLITS

    def _bursts(self, B: int, b: int, g: torch.Generator, pool: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """``N/b`` classes per row (Zipf with replacement, or ``pool`` novel ones without), each ``b`` times.

        Returns the chosen classes ``[B, m]``, the slot of each context item ``[B, N]`` and the
        query's slot ``[B]``.
        """
        N, m = self.context, self.context // b
        if pool is None:
            chosen = torch.multinomial(self.class_probs.expand(B, -1), m, replacement=True, generator=g)
        else:
            chosen = torch.rand(B, pool, generator=g).topk(m, -1).indices
        slots = torch.arange(m).repeat(b).expand(B, N)  # (B, N): slot j appears b times
        slots = slots.gather(1, torch.rand(B, N, generator=g).argsort(-1))  # shuffled
        return chosen, slots, torch.randint(m, (B,), generator=g)

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        """``n`` sequences of ``split`` (see :meth:`splits`)."""
        B, N, K, L, E = check_int("n", n, 1), self.context, self.classes, self.labels, self.exemplars
        g = split_generator(generator, split, self.splits())
        r = torch.arange(B)

        # known classes, bursty: (B, N) context classes and (B,) query class
        b = self.burstiness or N // 2
        chosen, slots, qslot = self._bursts(B, b, g, None)
        ctx_bursty, q_bursty = chosen.gather(1, slots), chosen[r, qslot]
        # known classes, independent draws (in_weights: the query's class removed from the context)
        q_iid = torch.multinomial(self.class_probs.expand(B, -1), 1, generator=g).squeeze(1)
        probs = self.class_probs.expand(B, -1).clone()
        if split == "in_weights":
            probs[r, q_iid] = 0
        ctx_iid = torch.multinomial(probs, N, replacement=True, generator=g)  # (B, N)
        # novel classes with fresh distinct labels per sequence
        pool_start = K + (self.novel_classes if split == "in_context" else 0)
        nchosen, nslots, nqslot = self._bursts(B, self.burst_novel, g, self.novel_classes)
        nlabels = torch.rand(B, L, generator=g).topk(nchosen.shape[1], -1).indices  # (B, m) distinct labels
        ctx_novel, q_novel = pool_start + nchosen.gather(1, nslots), pool_start + nchosen[r, nqslot]
        lab_novel, qlab_novel = nlabels.gather(1, nslots), nlabels[r, nqslot]

        # which kind each row is
        u_novel, u_bursty = torch.rand(B, generator=g), torch.rand(B, generator=g)
        if split in ("train", "test"):
            novel = u_novel < self.p_icl
            bursty = novel | ((u_bursty < self.p_bursty) & (self.burstiness > 0))
        else:
            novel = torch.full((B,), split == "in_context")
            bursty = torch.full((B,), split != "in_weights")
        known_bursty = bursty & ~novel
        ctx = torch.where(novel[:, None], ctx_novel, torch.where(known_bursty[:, None], ctx_bursty, ctx_iid))  # (B, N)
        query = torch.where(novel, q_novel, torch.where(known_bursty, q_bursty, q_iid))  # (B,)
        ctx_labels = torch.where(novel[:, None], lab_novel, ctx % L)
        q_label = torch.where(novel, qlab_novel, query % L)
        if split == "permuted_labels":
            shift = torch.randint(1, L, (B, 1), generator=g)
            ctx_labels, q_label = (ctx_labels + shift) % L, (q_label + shift[:, 0]) % L

        # exemplars: fresh for every item; a novel query repeats one its class shows in context
        ex = torch.randint(E, (B, N), generator=g)
        q_ex = torch.randint(E, (B,), generator=g)
        same = (ctx == query[:, None]).double()
        pick = (torch.rand(B, N, generator=g, dtype=torch.float64) * same).argmax(-1)  # a context item of the query's class
        q_ex = torch.where(novel, ex[r, pick], q_ex)

        inputs = torch.empty(B, self.seq_len, dtype=torch.long)
        inputs[:, 0 : 2 * N : 2] = L + ctx * E + ex
        inputs[:, 1 : 2 * N : 2] = ctx_labels
        inputs[:, 2 * N] = L + query * E + q_ex
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 2 * N] = q_label
        extra = {
            "classes": ctx,
            "query_class": query,
            "novel": novel,
            "bursty": bursty,
            "query_in_context": (ctx == query[:, None]).sum(-1),
        }
        return Batch(inputs, targets, extra=extra)
