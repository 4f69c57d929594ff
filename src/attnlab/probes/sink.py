"""Attention sinks: mass on the first token, Gu et al.'s sink rate, and ACT's hidden sinks.

Papers 68 (active-dormant heads: the BOS sink), 47 (ACT: hidden sinks beyond the first token)
and 12 (VAR). For a head and a key position ``k`` the probe measures

    α_k = Σ_{q ≥ k} A[q, k] / (T − k)

the attention ``k`` receives per query that can see it (Gu et al., "When attention sink emerges";
in a causal model ``T − k`` queries see key ``k``; in general the probe divides by the number of
queries the mask lets see ``k``). A head is a sink head for the first token when ``α_0 > 0.3``;
the sink rate is the fraction of such heads. A column ``j ≥ 1`` is a hidden sink (ACT) when
``α_j > 0.1``. Only column sums and visible-query counts are accumulated: ``O(H · T)`` per site.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import Findings, SiteProbe, grid, register

__all__ = ["Sink"]


@register("sink", paper="68, 47, 12")
class Sink(SiteProbe):
    """Per head: first-token mass, sink-head flags (α_0 > ε) and hidden sinks (α_j > τ, j ≥ 1).

    Paper: 68 (active-dormant attention heads), 47 (ACT hidden sinks), 12 (VAR).
    Shapes: per site, ``first_mass`` and ``alpha0`` are ``[H]`` means over inputs.

    Args:
        epsilon: α_0 above which a head is a sink head (Gu et al.: 0.3).
        tau: α_j above which a later column is a hidden sink (ACT: 0.1).
        sites: which sites to observe.

    Example:
        >>> import attnlab
        >>> p = Sink()
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[p])
        >>> p.end()
        >>> p.result()["attend"]["alpha0"].shape
        torch.Size([2])
    """

    min_tokens_reason = "the first query sees only token 0, so α₀ ≥ 1/T and short inputs make every head a sink head (below 4/ε tokens the floor 1/T is over a quarter of ε)"

    def __init__(self, epsilon: float = 0.3, tau: float = 0.1, sites=None):
        super().__init__(sites)
        for name, x in (("epsilon", epsilon), ("tau", tau)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1:
                raise ValueError(f"sink: {name} is a share of attention in (0, 1] (Gu et al.: epsilon=0.3; ACT: tau=0.1), got {name}={x!r}")
        self.epsilon, self.tau = float(epsilon), float(tau)
        self._cols: dict[str, list[Tensor]] = {}  # this input: [mass [H, T], queries [H|1, T]]
        self.hidden: list[dict] = []  # every hidden sink found, with its input and token
        self.inputs = 0

    @property
    def min_tokens(self) -> int:
        """``⌈4/ε⌉`` (14 at ε = 0.3): the floor ``α₀ ≥ 1/T`` is then at most a quarter of ε."""
        return math.ceil(4 / self.epsilon - 1e-9)

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        p = chunk.probs[0]  # [H, Tc, Ts]: the first sequence of the batch
        H, _, Ts = p.shape
        cols = self._cols.get(site.name)
        if cols is None:
            cols = self._cols[site.name] = [
                torch.zeros(H, chunk.lk, dtype=torch.float64),
                torch.zeros(chunk.visible.shape[1], chunk.lk, dtype=torch.float64),
            ]
        span = slice(chunk.kv_start, chunk.kv_start + Ts)
        cols[0][:, span] += chunk.column_sum[0]
        cols[1][:, span] += chunk.visible[0].sum(1)

    def end(self) -> None:
        """Fold this input's column statistics into per-head means and the hidden-sink list."""
        self.inputs += 1
        for name, (mass, queries) in self._cols.items():
            alpha = mass / queries.clamp(min=1)  # [H, T]
            T = mass.shape[1]
            acc = self._acc.setdefault(name, {"first_mass": 0.0, "alpha0": 0.0, "n": 0})
            acc["first_mass"] = acc["first_mass"] + mass[:, 0] / T  # mean over all queries of A[q, 0]
            acc["alpha0"] = acc["alpha0"] + alpha[:, 0]
            acc["n"] += 1
            heads, cols = torch.nonzero(alpha[:, 1:] > self.tau, as_tuple=True)
            for h, j in zip(heads.tolist(), (cols + 1).tolist()):
                token = self.tokens[j] if j < len(self.tokens) else ""
                self.hidden.append(
                    {
                        "site": name,
                        "head": h,
                        "position": j,
                        "token": token,
                        "alpha": round(float(alpha[h, j]), 4),
                        "input": self.inputs - 1,
                    }
                )
        self._cols.clear()

    def result(self) -> dict:
        """Per site: ``first_mass``, ``alpha0`` (means over inputs, ``[H]``) and ``sink_head`` (α_0 > ε)."""
        out = {}
        for name, acc in self._acc.items():
            alpha0 = acc["alpha0"] / acc["n"]
            out[name] = {"first_mass": acc["first_mass"] / acc["n"], "alpha0": alpha0, "sink_head": alpha0 > self.epsilon}
        return out

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings().heatmap("first_token_mass", "first-token mass", grid({k: v["first_mass"] for k, v in r.items()}, sites))
        n_heads = sum(len(v["alpha0"]) for v in r.values())
        n_sink = sum(int(v["sink_head"].sum()) for v in r.values())
        if n_heads:
            out.bar(
                "sink_rate",
                "sink rate (fraction of heads with α₀ > ε)",
                [float(r[s.name]["sink_head"].double().mean()) if s.name in r else float("nan") for s in sites],  # NaN: not observed
            )
            out.notes.append(
                f"Sink rate: {n_sink} of {n_heads} heads ({n_sink / n_heads:.0%}) put more than ε={self.epsilon} of each query's attention on the first token."
            )
        by_token = Counter(h["token"] for h in self.hidden)
        out.table(
            "sink_tokens",
            "sink tokens (hidden sinks, α_j > τ, j ≥ 1)",
            [
                {"token": repr(tok), "head_input_pairs": n, "max_alpha": max(h["alpha"] for h in self.hidden if h["token"] == tok)}
                for tok, n in by_token.most_common(20)
            ],
        )
        if by_token:
            tok, n = by_token.most_common(1)[0]
            out.notes.append(f"Most frequent hidden sink token: {tok!r} ({n} head-input pairs with α > τ={self.tau}).")
        return out
