"""Paper 23: Routing Transformer, content-based sparse attention by online k-means.

Routing Transformer (Roy et al. 2021, "Efficient Content-Based Sparse Attention with Routing
Transformers") clusters queries and keys with online k-means and lets a token attend only to
tokens routed to the same cluster, with half of the heads doing local attention instead.

- Queries and keys are shared (one projection), so a token always shares its own cluster and
  no query is left without a key. Unlike Reformer, attending to oneself is not masked.
- k-means is spherical, one set of centroids per routing head: a token goes to the centroid
  with the largest cosine. In training mode each forward pass first moves every centroid that
  got tokens towards their mean direction, ``μ ← normalise(λ μ + (1 − λ) mean)`` with
  ``λ = 0.999`` (the paper's EMA decay), then routes with the moved centroids; the first
  training batch seeds the centroids by k-means++. Eval mode leaves centroids alone. Centroids
  are buffers, not parameters: gradients never reach them.
- ``clusters`` defaults to ``round(sqrt(seq_len))``, the paper's ``sqrt(n)`` for the training
  length.
- The first ``local_heads`` heads (default half) attend in a sliding window of ``window`` tokens
  on each side (before only, when causal).

Two exact layouts compute the same output (``layout=``):

- ``"dense"``: all heads in one :func:`attnlab.core.attend` call at site ``routing`` with a
  ``[B, H, T, T]`` boolean mask (window band for local heads, "same cluster id" for routing
  heads). O(T²), but probes and edits see the familiar ``[B, H, T, T]`` attention.
- ``"clusters"``: local heads run at site ``routing.local`` with a sliding-window mask,
  O(T·window) (when no probe or edit is attached, as blocks of ``window`` queries against the
  ``3·window`` keys around them with a band bias: the same numbers, faster); each routing
  head's tokens are sorted by cluster and packed into
  ``K`` blocks of ``C`` (the largest cluster) slots, so site ``routing.clusters`` sees
  ``[B, Hr·K, C, D]``: one "head" per (routing head, cluster), padded slots masked. Cost
  O(K·C²), which is O(T·sqrt(T)) for balanced clusters, without the paper's balanced top-w
  approximation (a token is never cut off from its own cluster).
- ``"auto"`` (default) takes ``clusters`` when ``K·C² ≤ T²/2``, else ``dense``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnlab.core import Site, attached, attend
from attnlab.core import masks as M
from attnlab.mechanisms import register
from attnlab.mechanisms._options import positive_ints

__all__ = ["LAYOUTS", "OnlineKMeans", "RoutingAttention"]

LAYOUTS = ("auto", "clusters", "dense")


class OnlineKMeans(nn.Module):
    """Spherical k-means with EMA centroid updates, one set of centroids per head.

    Paper: 23 (Routing Transformer), online k-means with decay ``λ``.
    Shapes: ``x [B, H, T, D]`` -> cluster ids ``[B, H, T]``; ``centroids [H, K, D]`` (unit rows).

    Centroids start random; the first :meth:`update` re-seeds them from its batch by k-means++
    (each next seed drawn with weight ``1 − cos`` to the nearest seed so far), so that clusters
    present in the data get their own centroid before the slow EMA takes over.

    Example:
        >>> km = OnlineKMeans(heads=2, clusters=3, dim=4)
        >>> km.assign(torch.randn(1, 2, 5, 4)).shape
        torch.Size([1, 2, 5])
    """

    def __init__(self, heads: int, clusters: int, dim: int, *, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("centroids", F.normalize(torch.randn(heads, clusters, dim), dim=-1))
        self.register_buffer("seeded", torch.tensor(False))

    def assign(self, x: Tensor) -> Tensor:
        """The nearest centroid (largest cosine) of every vector: ``[B, H, T]`` int64."""
        sim = torch.einsum("bhtd,hkd->bhtk", F.normalize(x.detach(), dim=-1), self.centroids.to(x.dtype))  # [B, H, T, K]
        return sim.argmax(-1)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """One online k-means step on ``x``: assign, then ``μ ← normalise(λ μ + (1 − λ) mean direction)`` per centroid that got vectors."""
        K = self.centroids.shape[1]
        xn = rearrange(F.normalize(x.float(), dim=-1), "b h t d -> h (b t) d")  # [H, N, D]
        if not self.seeded:
            self.centroids.copy_(_kmeans_pp(xn, K))
            self.seeded.fill_(True)
        onehot = F.one_hot(rearrange(self.assign(x), "b h t -> h (b t)"), K).float()  # [H, N, K]
        counts = onehot.sum(1)  # [H, K]
        mean = torch.einsum("hnk,hnd->hkd", onehot, xn) / counts.clamp(min=1)[..., None]  # [H, K, D]
        moved = F.normalize(self.decay * self.centroids + (1 - self.decay) * mean.to(self.centroids.dtype), dim=-1)
        self.centroids.copy_(torch.where(counts[..., None] > 0, moved, self.centroids))


def _kmeans_pp(xn: Tensor, K: int) -> Tensor:
    """``K`` seeds ``[H, K, D]`` among the unit vectors ``xn [H, N, D]``, drawn with weight ``1 − cos`` to the nearest seed."""
    H, N, _ = xn.shape
    rows = torch.arange(H, device=xn.device)
    pick = torch.randint(N, (H,), device=xn.device)  # [H] first seed
    seeds = [xn[rows, pick]]  # each [H, D]
    nearest = torch.einsum("hnd,hd->hn", xn, seeds[0])  # [H, N] cosine to the nearest seed
    for _ in range(1, K):
        pick = torch.multinomial((1 - nearest).clamp(min=1e-12), 1)[:, 0]  # [H]
        seeds.append(xn[rows, pick])
        nearest = torch.maximum(nearest, torch.einsum("hnd,hd->hn", xn, seeds[-1]))
    return torch.stack(seeds, dim=1)  # [H, K, D]


@functools.lru_cache(maxsize=16)
def _local_window(window: int, is_causal: bool) -> M.Mask:
    """The local heads' sliding window: one mask object per setting, so that its tile plans are cached."""
    return M.sliding_window(window, 0 if is_causal else window)


@functools.lru_cache(maxsize=16)
def _band_bias(T: int, w: int, after: int, device: str) -> Tensor:
    """``[n, 1, w, 2w + after]``: 0 where block ``b``'s query ``i`` may see key slot ``j`` (key ``b·w - w + j``), else -inf.

    A query sees the keys at most ``w`` before it and ``after`` (0 or ``w``) after it, inside ``0 .. T-1``.
    """
    n = -(-T // w)
    q = torch.arange(n)[:, None, None] * w + torch.arange(w)[:, None]  # [n, w, 1] query positions
    key = torch.arange(n)[:, None, None] * w - w + torch.arange(2 * w + after)  # [n, 1, 2w + after] key positions
    ok = (key >= q - w) & (key <= q + after) & (key >= 0) & (key < T)
    return torch.zeros(ok.shape).masked_fill_(~ok, float("-inf"))[:, None].to(device)  # [n, 1, w, 2w + after]


@register("routing", paper="23", time="O(T·sqrt(T)) balanced clusters, O(T²) worst", memory="O(T·sqrt(T)), O(T²) worst")
class RoutingAttention(nn.Module):
    """Routing attention: tokens attend within their online-k-means cluster; half the heads are local.

    Paper: 23 (Routing Transformer, Roy et al. 2021), sqrt(n) clusters, EMA decay 0.999, half local heads.
    Shapes: ``x [B, T, C] -> [B, T, C]``; heads ``[0, local_heads)`` local, the rest routed.

    Args:
        dim: model width ``C``.
        heads: number of heads.
        clusters: k-means centroids per routing head; default ``round(sqrt(seq_len))``.
        seq_len: the training length that sets the default number of clusters.
        window: local heads see ``window`` tokens on each side (before only, when causal).
        local_heads: number of local heads; default ``heads // 2``.
        decay: EMA decay ``λ`` of the centroids.
        is_causal: add the causal mask to every head.
        layout: ``"auto"``, ``"clusters"`` (packed per cluster, sites ``routing.local`` and
            ``routing.clusters``) or ``"dense"`` (one ``[B, H, T, T]`` mask, site ``routing``).
        backend: the :func:`attnlab.core.attend` backend.

    Example:
        >>> m = RoutingAttention(dim=16, heads=4, clusters=2, window=2)
        >>> m(torch.randn(2, 6, 16)).shape
        torch.Size([2, 6, 16])
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        clusters: int | None = None,
        seq_len: int = 1024,
        window: int = 128,
        local_heads: int | None = None,
        decay: float = 0.999,
        is_causal: bool = False,
        layout: str = "auto",
        backend: str = "auto",
    ):
        super().__init__()
        positive_ints(dim=dim, heads=heads, seq_len=seq_len, window=window)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        clusters = max(1, round(math.sqrt(seq_len))) if clusters is None else clusters
        if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
            raise ValueError(f"clusters must be a positive int or None (sqrt(seq_len)), got clusters={clusters!r}")
        local_heads = heads // 2 if local_heads is None else local_heads
        if isinstance(local_heads, bool) or not isinstance(local_heads, int) or not 0 <= local_heads <= heads:
            raise ValueError(f"local_heads must be an int in [0, heads={heads}], got local_heads={local_heads!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got layout={layout!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got decay={decay!r}")
        self.dim, self.heads, self.window, self.local_heads = dim, heads, window, local_heads
        self.is_causal, self.layout, self.backend = is_causal, layout, backend
        self.qk = nn.Linear(dim, dim)  # shared queries and keys
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.kmeans = OnlineKMeans(heads - local_heads, clusters, dim // heads, decay=decay)
        self.site = Site(name="routing", num_heads=heads, num_kv_heads=heads)
        self.local_site = Site(name="routing.local", num_heads=local_heads, num_kv_heads=local_heads)
        routed = (heads - local_heads) * clusters
        self.clusters_site = Site(name="routing.clusters", num_heads=routed, num_kv_heads=routed)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        qk = rearrange(self.qk(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        v = rearrange(self.v(x), "b t (h d) -> b h t d", h=self.heads)  # [B, H, T, D]
        routed = qk[:, self.local_heads :]  # [B, Hr, T, D]
        if self.training and routed.shape[1]:
            self.kmeans.update(routed)
        ids = self.kmeans.assign(routed)  # [B, Hr, T]
        K = self.kmeans.centroids.shape[1]
        counts = torch.zeros(B, ids.shape[1], K, dtype=torch.long, device=x.device).scatter_add_(-1, ids, torch.ones_like(ids))
        C = int(counts.max()) if ids.numel() else 0  # the largest cluster
        if self.layout == "dense" or (self.layout == "auto" and 2 * K * C * C > T * T):
            local = M.sliding_window(self.window, self.window).dense(T, T, device=x.device)  # [1, 1, T, T]
            mask = torch.cat([local.expand(B, self.local_heads, T, T), ids[..., :, None] == ids[..., None, :]], dim=1)  # [B, H, T, T]
            out = attend(qk, qk, v, mask=mask, is_causal=self.is_causal, backend=self.backend, site=self.site)  # [B, H, T, D]
        else:
            out = self._per_cluster(routed, v[:, self.local_heads :], ids, counts, C)  # [B, Hr, T, D]
            if self.local_heads:
                out = torch.cat([self._local(qk[:, : self.local_heads], v[:, : self.local_heads]), out], dim=1)  # [B, H, T, D]
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))  # [B, T, C]

    def _local(self, qk: Tensor, v: Tensor) -> Tensor:
        """The local heads: ``qk, v [B, Hl, T, D]`` -> ``[B, Hl, T, D]``.

        Probes and edits see ``[B, Hl, T, T]`` with the sliding-window mask. When nothing is
        attached, queries go in blocks of ``window`` against their block and the one before (and
        after, unless causal), with a fixed band bias: SDPA's fused kernel on ``[B·T/w, Hl, w, 3w]``
        instead of the tiled kernel on the band (at T=2048, w=64: forward 5x, forward+backward
        2.7x faster).
        """
        B, _, T, _ = qk.shape
        w = self.window
        if any(attached()) or 4 * w >= T:
            return attend(qk, qk, v, mask=_local_window(w, self.is_causal), backend=self.backend, site=self.local_site)
        after = 0 if self.is_causal else w  # keys after the query block
        n = -(-T // w)  # query blocks

        def blocks(t: Tensor, left: int, right: int, span: int) -> Tensor:  # [B, Hl, T, D] -> [B·n, Hl, span, D]
            t = F.pad(t, (0, 0, left, n * w - T + right)).unfold(2, span, w)  # [B, Hl, n, D, span]
            return rearrange(t, "b h n d s -> (b n) h s d")

        q = blocks(qk, 0, 0, w)  # [B·n, Hl, w, D]
        k, vv = (blocks(t, w, after, 2 * w + after) for t in (qk, v))  # [B·n, Hl, 2w + after, D]
        bias = _band_bias(T, w, after, str(qk.device)).to(qk.dtype)  # [n, 1, w, 2w + after]
        bias = bias.expand(B, *bias.shape).flatten(0, 1)  # [B·n, 1, w, 2w + after] (a view when B = 1)
        out = attend(q, k, vv, bias=bias, backend=self.backend, site=self.local_site)  # [B·n, Hl, w, D]
        return rearrange(out, "(b n) h s d -> b h (n s) d", b=B)[:, :, :T]

    def _per_cluster(self, qk: Tensor, v: Tensor, ids: Tensor, counts: Tensor, C: int) -> Tensor:
        """Routing heads packed by cluster: ``qk, v [B, Hr, T, D]``, ``ids [B, Hr, T]``, ``counts [B, Hr, K]`` -> ``[B, Hr, T, D]``."""
        B, Hr, T, D = qk.shape
        K = counts.shape[-1]
        if Hr == 0:
            return v  # [B, 0, T, D]
        pos = torch.arange(T, device=qk.device)
        order = torch.argsort(ids * T + pos, dim=-1)  # [B, Hr, T] by cluster, then position
        sorted_ids = ids.gather(-1, order)  # [B, Hr, T]
        start = counts.cumsum(-1) - counts  # [B, Hr, K] first sorted index of each cluster
        slot = sorted_ids * C + pos - start.gather(-1, sorted_ids)  # [B, Hr, T] slot of the i-th sorted token
        slot = torch.empty_like(slot).scatter_(-1, order, slot)  # [B, Hr, T] slot of each token
        index = slot[..., None].expand(B, Hr, T, D)

        def pack(t: Tensor) -> Tensor:  # [B, Hr, T, D] -> [B, Hr·K, C, D]
            return t.new_zeros(B, Hr, K * C, D).scatter(2, index, t).view(B, Hr * K, C, D)

        filled = torch.zeros(B, Hr, K * C, dtype=torch.bool, device=qk.device).scatter_(-1, slot, True)  # [B, Hr, K·C]
        keys = filled.view(B, Hr * K, 1, C)  # [B, Hr·K, 1, C] padded slots are no keys
        pq = pack(qk)
        out = attend(pq, pq, pack(v), mask=keys, is_causal=self.is_causal, backend=self.backend, site=self.clusters_site)
        return out.view(B, Hr, K * C, D).gather(2, index)  # [B, Hr, T, D]
