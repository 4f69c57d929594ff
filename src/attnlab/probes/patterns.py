"""Head patterns: previous-token, duplicate-token and induction scores, attention distance, NMI class.

- Papers 5 and 57 (circuits): TransformerLens' head detectors. With a detection pattern ``D``
  (previous token: ``D[i, i−1] = 1``; duplicate token: ``D[i, j] = 1`` for ``j < i`` with
  ``tok[j] = tok[i]``; induction: ``D[i, j] = 1`` for ``1 ≤ j ≤ i`` with ``tok[j−1] = tok[i]``) a
  head scores ``Σ A·D / Σ A`` (TransformerLens' ``"mul"`` measure, BOS and current token kept).
  Run them on repeated random token sequences (``attnlab scan --synthetic repeated``).
- Paper 52: mean attention distance ``Σ_j A[i, j]·|i − j|``, averaged over queries.
- Paper 37 (UNIP): normalised mutual information between query and key position, with queries
  uniform and ``p(k | q) = A[q, k]``: ``I = H(K) − mean_q H(A[q])`` and
  ``NMI = I / sqrt(H(Q) · H(K))``. A head is *local* (NMI ≥ 0.5), *global* (NMI < 0.2) or
  *hybrid*; the thresholds are attnlab's (the paper orders local > hybrid > global).

Everything streams: sums per head, and a column mass ``[H, T]`` per site for the input at hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import Findings, SiteProbe, grid, kv_group, register

__all__ = ["Patterns"]

_SCORES = ("previous_token", "duplicate_token", "induction", "distance")


@register("patterns", paper="5, 57, 52, 37")
class Patterns(SiteProbe):
    """Per head: previous-token, duplicate-token and induction scores, mean distance, NMI and class.

    Paper: 5, 57 (TransformerLens detectors), 52 (attention distance), 37 (UNIP NMI).
    Shapes: per site, every score is ``[H]`` (averaged over inputs).

    The token-based scores need the input ids: :meth:`begin` is called by the scan; when
    attending directly, call ``probe.begin(input_ids, [])`` first.

    Args:
        local: NMI at or above which a head is local.
        global_: NMI below which a head is global.
        sites: which sites to observe.
    """

    min_tokens = 16
    min_tokens_reason = (
        "previous-token, duplicate and induction scores need repeated tokens and NMI needs many query positions "
        "(its H(Q) is log of the rows); scan repeated random tokens (repeated=True) for the detectors"
    )

    def __init__(self, local: float = 0.5, global_: float = 0.2, sites=None):
        super().__init__(sites)
        self.local, self.global_ = local, global_
        self._cur: dict[str, dict[str, Tensor]] = {}
        self._pair_cache: dict[tuple, tuple] = {}  # this input's detector pairs per chunk

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        if self.input_ids is None:
            raise ValueError("Patterns needs the input ids: call probe.begin(input_ids, tokens) before the forward pass")
        p = chunk.probs  # [B, H, Tc, Ts]
        B, H, Tc, Ts = p.shape
        q0, k0 = int(chunk.q_idx[0]), chunk.kv_start
        qi = chunk.q_idx.to(p.device)
        ki = torch.arange(k0, k0 + Ts, device=p.device)
        sums = p.new_zeros(4, H, dtype=torch.float64)  # previous, duplicate, induction, distance
        flat = p.reshape(B, H, Tc * Ts)
        for b in range(B):  # the (query, key) pairs each detector credits are few: gather them
            for n, pairs in enumerate(self._pairs(b, qi, ki)):
                sums[n] += flat[b].index_select(1, pairs).sum(-1)
        # distance, summed over rows: Σ_ij p_ij (i − j) = Σ_i i·[row sees a key] − Σ_j j·(column sum j),
        # from the shared column sums (no pass of its own), plus twice the part with j > i
        rowsum = chunk.num_visible.gt(0).to(p.dtype).expand(B, H, Tc)  # rows sum to 1, or 0 when empty
        col = chunk.column_sum  # [B, H, Ts]
        sums[3] = (rowsum * qi.to(p.dtype)).sum((0, 2)) - (col * ki.to(p.dtype)).sum((0, 2))
        a0 = max(0, q0 + 1 - k0)  # keys from here on come after some query
        if a0 < Ts:
            ka = ki[a0:]
            ahead = chunk.visible[..., a0:] & (ka[None, :] > qi[:, None])  # never in a causal chunk
            if bool(ahead.any()):
                sums[3] += 2 * (p[..., a0:] * ((ka[None, :] - qi[:, None]).clamp(min=0).to(p.dtype) * ahead)).sum((0, 2, 3))
        cur = self._cur.setdefault(
            site.name, {"sums": 0.0, "rows": 0.0, "row_entropy": 0.0, "columns": torch.zeros(H, chunk.lk, dtype=torch.float64)}
        )
        cur["sums"] = cur["sums"] + sums
        cur["rows"] = cur["rows"] + rowsum.sum((0, 2)).double()
        cur["row_entropy"] = cur["row_entropy"] + chunk.row_entropy.sum((0, 2)).double()
        cur["columns"][:, k0 : k0 + Ts] += col.sum(0)

    def begin(self, input_ids: Tensor, tokens: list[str]) -> None:
        super().begin(input_ids, tokens)
        self._pair_cache.clear()

    def _pairs(self, b: int, qi: Tensor, ki: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Previous-token, duplicate-token and induction (query, key) pairs of a chunk, as flat
        indices into its ``[Tc * Ts]`` rows.

        They depend only on the tokens, so each chunk's are found once per input and reused at
        every layer.
        """
        Ts = ki.numel()
        key = (b, int(qi[0]), qi.numel(), int(ki[0]) if Ts else 0, Ts)
        hit = self._pair_cache.get(key)
        if hit is None:
            ids = self.input_ids[b].to(qi.device)
            before = ki[None, :] < qi[:, None]  # [Tc, Ts]
            prev = ki[None, :] == qi[:, None] - 1
            same = ids[qi][:, None] == ids[ki][None, :]
            follows = ids[qi][:, None] == ids[(ki - 1).clamp(min=0)][None, :]  # key j follows a copy of the query's token
            induction = follows & (ki[None, :] <= qi[:, None]) & (ki >= 1)[None, :]
            hit = tuple(torch.nonzero(m.flatten()).flatten() for m in (prev, same & before, induction))
            self._pair_cache[key] = hit
        return hit

    def end(self) -> None:
        """Fold this input's sums into per-head means and compute its NMI."""
        self._pair_cache.clear()
        for name, cur in self._cur.items():
            rows = cur["rows"].clamp(min=1)  # the attention mass seen: one per row with a visible key
            scores = {k: cur["sums"][n] / rows for n, k in enumerate(_SCORES)}
            pk = cur["columns"] / rows[:, None]  # p(k) with queries uniform
            h_k = -torch.xlogy(pk, pk).sum(-1)
            info = (h_k - cur["row_entropy"] / rows).clamp(min=0)
            h_q = torch.log(rows)
            scores["nmi"] = torch.where((h_q > 0) & (h_k > 0), info / torch.sqrt(h_q * h_k).clamp(min=1e-30), 0.0)
            acc = self._acc.setdefault(name, {"n": 0, **{k: 0.0 for k in scores}})
            for k, v in scores.items():
                acc[k] = acc[k] + v
            acc["n"] += 1
        self._cur.clear()

    def result(self) -> dict:
        """Per site: ``previous_token``, ``duplicate_token``, ``induction``, ``distance``, ``nmi`` ``[H]`` and ``kind`` (list)."""
        out = {}
        for name, acc in self._acc.items():
            r = {k: v / acc["n"] for k, v in acc.items() if k != "n"}
            r["kind"] = ["local" if x >= self.local else "global" if x < self.global_ else "hybrid" for x in r["nmi"].tolist()]
            out[name] = r
        return out

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings()
        for k, title in (
            ("previous_token", "previous-token score"),
            ("duplicate_token", "duplicate-token score"),
            ("induction", "induction score"),
            ("distance", "mean attention distance (tokens)"),
            ("nmi", "NMI (query, key position)"),
        ):
            out.heatmap(k, title, grid({n: v[k] for n, v in r.items()}, sites))
        for k in ("previous_token", "induction"):
            scores = [(float(x), s.layer, h, kv_group(s, h)) for s in sites if s.name in r for h, x in enumerate(r[s.name][k])]
            best = sorted(scores, reverse=True)[:5]
            out.table(
                f"top_{k}",
                f"top {k.replace('_', '-')} heads",
                [{"layer": layer, "head": h, "kv_group": g, "score": round(v, 3)} for v, layer, h, g in best],
            )
            if best:
                out.notes.append(f"Strongest {k.replace('_', '-')} head: layer {best[0][1]} head {best[0][2]} (score {best[0][0]:.2f}).")
        kinds = [kind for v in r.values() for kind in v["kind"]]
        if kinds:
            out.notes.append(f"Heads by NMI: {kinds.count('local')} local, {kinds.count('hybrid')} hybrid, {kinds.count('global')} global.")
        return out
