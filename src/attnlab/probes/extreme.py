"""Extreme tokens: value-state drains and residual-state peaks (paper 68).

Paper 68 (active-dormant attention heads) describes three extreme-token phenomena that come
together: attention sinks (see :mod:`attnlab.probes.sink`), *value-state drains* (the sink token's
value vectors are much smaller than other tokens') and *residual-state peaks* (its residual
stream norm is much larger). This probe records, per layer and token, the value-vector norm
(all kv heads concatenated) and the residual-stream norm after the block, through the hooks of
:func:`attnlab.models.hf.instrument`. It does not look at attention probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.probes._base import Findings, SiteProbe, register

__all__ = ["Extreme"]


@register("extreme", paper="68")
class Extreme(SiteProbe):
    """Per layer: value-norm and residual-norm ratios of the first token to the median token.

    Paper: 68 (value-state drains, residual-state peaks).
    Shapes: per input and layer, norms ``[T]`` of the first sequence.

    ``value_ratio[l] = ‖v_0‖ / median_t ‖v_t‖`` (a drain is ≪ 1) and
    ``residual_ratio[l] = ‖x_0‖ / median_t ‖x_t‖`` (a peak is ≫ 1), averaged over inputs; the
    largest residual norms with their tokens are listed.
    """

    observes_attention = False
    min_tokens = 8
    min_tokens_reason = "the ratios divide the first token's norm by the median of the others: fewer than 7 others give no stable median"

    def __init__(self, sites=None, top: int = 10):
        super().__init__(sites)
        self.top = top
        self._values: dict[int, Tensor] = {}
        self._resid: dict[int, Tensor] = {}
        self.peaks: list[dict] = []
        self.inputs = 0

    def observe_values(self, v: Tensor, site: Site) -> None:
        """Value states ``[B, Hkv, T, D]`` at a site (called by the HF adapter)."""
        if self.wants(site) and site.layer is not None:
            self._values[site.layer] = v[0].float().transpose(0, 1).flatten(1).norm(dim=-1).cpu()  # [T]

    def observe_block(self, layer: int, x_in: Tensor, x_out: Tensor) -> None:
        """A block's input and output ``[B, T, C]`` (called by the HF adapter)."""
        self._resid[layer] = x_out[0].float().norm(dim=-1).cpu()  # [T]

    def end(self) -> None:
        self.inputs += 1
        for name, norms in (("value", self._values), ("residual", self._resid)):
            for layer, n in norms.items():
                ratio = float(n[0] / n[1:].median()) if n.numel() > 1 else float("nan")  # one token: no ratio
                acc = self._acc.setdefault(f"{name}_ratio", {})
                acc[layer] = acc.get(layer, 0.0) + ratio
        for layer, n in self._resid.items():
            for t in torch.topk(n, min(self.top, n.numel())).indices.tolist():
                self.peaks.append(
                    {
                        "layer": layer,
                        "position": t,
                        "token": self.tokens[t] if t < len(self.tokens) else "",
                        "norm": round(float(n[t]), 2),
                        "ratio to median": round(float(n[t] / n.median()), 2),
                        "input": self.inputs - 1,
                    }
                )
        self._values.clear()
        self._resid.clear()

    def result(self) -> dict:
        """``value_ratio`` and ``residual_ratio``: ``{layer: mean ratio over inputs}``; plus ``peaks`` (a list)."""
        out = {k: {layer: v / self.inputs for layer, v in sorted(d.items())} for k, d in self._acc.items()}
        out["peaks"] = sorted(self.peaks, key=lambda r: -r["norm"])[: self.top * 3]
        return out

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings()
        for k, title in (("value_ratio", "value norm, first token ÷ median"), ("residual_ratio", "residual norm, first token ÷ median")):
            if r.get(k):
                out.bar(k, title, [r[k].get(s.layer, float("nan")) for s in sites])  # NaN: not observed
        out.table(
            "residual_peaks",
            "largest residual-stream norms",
            [{("ratio_to_median" if c == "ratio to median" else c): v for c, v in p.items()} for p in r["peaks"][:15]],
        )
        if r.get("residual_ratio"):
            layer, ratio = max(r["residual_ratio"].items(), key=lambda kv: kv[1])
            out.notes.append(f"Residual-state peak: the first token's residual norm is {ratio:.1f}× the median token's at layer {layer}.")
        if r.get("value_ratio"):
            layer, ratio = min(r["value_ratio"].items(), key=lambda kv: kv[1])
            out.notes.append(f"Value-state drain: the first token's value norm is {ratio:.2f}× the median token's at layer {layer}.")
        return out
