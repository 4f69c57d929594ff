"""Paper 14: EchoAtt, layers that reuse another layer's attention probabilities.

EchoAtt finds layers whose attention maps are alike and lets the later layers of a block reuse
the first layer's ``softmax(QKᵀ)``: a sharing layer keeps its own value and output projections
and drops its queries and keys. Two pieces:

- :class:`SharedAttention`, the sharing layer: ``out = W_o · (P · x W_v)`` for given
  probabilities ``P [B, H, T, T]``. Applying given probabilities is a matrix product, not a
  softmax: plain PyTorch, no site.
- :class:`CaptureProbs`, the way to get ``P`` from a source layer without touching it: a
  ``"probs"``-stage edit that records the probabilities at one site, chunk by chunk of query
  rows, and returns them unchanged.

    >>> capture = CaptureProbs("layers.0.attn")          # doctest: +SKIP
    >>> with attnlab.attach(edits=[capture]):            # doctest: +SKIP
    ...     h = source(x)
    >>> y = shared(h, capture.probs())                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.mechanisms import register

__all__ = ["CaptureProbs", "SharedAttention"]


class CaptureProbs(Edit):
    """A ``"probs"`` edit that records the attention probabilities at one site, unchanged.

    Paper: 14 (EchoAtt: attend, copy, then adjust).
    Shapes: :meth:`probs` gives ``[B, H, Tq, Tk]`` (float32, float64 for float64 inputs).

    The edit forces the row pass at the site it selects (every probability edit does), and
    returns each chunk as it came, so the source output equals the row pass's output bit for
    bit. Each call at the site replaces the previous record (a chunk starting at query 0 starts
    a new record).

    Args:
        site: which site to record: a name, a glob, a list or a predicate; it must select one
            site (recording two sites at once raises).
        detach: record detached probabilities (default), so that a layer fed them sends no
            gradient back into the source's queries and keys. ``False`` keeps the graph.

    Example:
        >>> import attnlab
        >>> cap = CaptureProbs("src")
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> with attnlab.attach(edits=[cap]):
        ...     _ = attnlab.attend(q, k, v, is_causal=True, site=Site("src"))
        >>> cap.probs().shape
        torch.Size([1, 2, 5, 5])
    """

    stage = "probs"

    def __init__(self, site: str | list[str] | Callable[[Site], bool], *, detach: bool = True):
        self._match = site_matcher(site)
        self.detach = detach
        self.site_name: str | None = None
        self._rows: list[tuple[Tensor, Tensor, Tensor]] = []

    def at(self, site: Site) -> Callable | None:
        if not self._match(site):
            return None
        if self.site_name not in (None, site.name):
            raise ValueError(f"CaptureProbs records one site, but its selection matched {self.site_name!r} and {site.name!r}: select one")
        self.site_name = site.name

        def record(probs: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            if len(q_idx) and int(q_idx[0]) == 0:
                self._rows.clear()
            self._rows.append((probs.detach() if self.detach else probs, q_idx, kv_idx))
            return probs

        return record

    def probs(self, kv_len: int | None = None) -> Tensor:
        """The recorded probabilities ``[B, H, Tq, Tk]``, zero outside the spans the row pass computed.

        Args:
            kv_len: number of keys ``Tk``; default the last key any query could see, plus one
                (pass the sequence length when trailing keys are masked for every query).
        """
        if not self._rows:
            raise ValueError("nothing recorded: run the source layer inside attnlab.attach(edits=[capture]) first")
        Tq = max(int(q[-1]) for _, q, _ in self._rows) + 1
        seen = max((int(k[-1]) + 1 for _, _, k in self._rows if len(k)), default=0)
        if kv_len is not None and kv_len < seen:
            raise ValueError(f"kv_len={kv_len} is shorter than the {seen} keys recorded: pass kv_len >= {seen} or None")
        Tk = seen if kv_len is None else kv_len
        B, H = self._rows[0][0].shape[:2]
        out = self._rows[0][0].new_zeros(B, H, Tq, Tk)
        for p, q_idx, kv_idx in self._rows:
            rows = p.new_zeros(B, H, len(q_idx), Tk)
            rows[..., kv_idx] = p  # [B, H, Tc, Tk]
            out = out.index_copy(2, q_idx, rows)  # [B, H, Tq, Tk]
        return out


@register("shared", paper="14", layout="[B, T, C] + probs [B, H, T, T]", time="O(T²·C)", memory="O(T²)")
class SharedAttention(nn.Module):
    """An attention layer that applies another layer's probabilities to its own values.

    Paper: 14 (EchoAtt: attend, copy, then adjust).
    Shapes: ``x [B, T, C]`` and ``probs [B|1, H, T, T]`` → ``[B, T, C]``.

    ``out = W_o · concat_h(P_h · x W_v,h)``: the attention layer of a transformer with the
    softmax replaced by given probabilities (from :class:`CaptureProbs`, or any row-stochastic
    tensor). The layer has no queries or keys; gradients reach ``W_v``, ``W_o``, ``x`` and,
    only if it requires grad, ``probs``.

    Args:
        dim: model width ``C``.
        heads: number of heads ``H``; must equal the heads of the probabilities it is fed.
        bias: use biases in the value and output projections.

    Example:
        >>> m = SharedAttention(16, 4)
        >>> p = torch.softmax(torch.randn(2, 4, 6, 6), -1)
        >>> m(torch.randn(2, 6, 16), p).shape
        torch.Size([2, 6, 16])
    """

    def __init__(self, dim: int, heads: int, *, bias: bool = False):
        super().__init__()
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        self.dim, self.heads = dim, heads
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, probs: Tensor) -> Tensor:
        B, T, _ = x.shape  # [B, T, C]
        if probs.dim() != 4 or probs.shape[0] not in (1, B) or probs.shape[1:] != (self.heads, T, T):
            raise ValueError(
                f"probs must be [B|1, H, T, T] = [{B}|1, {self.heads}, {T}, {T}], got {tuple(probs.shape)}"
                " (CaptureProbs.probs(kv_len=T) pads the keys to T)"
            )
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        out = torch.matmul(probs.to(v.dtype), v)  # [B, H, T, D]
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))  # [B, T, C]
