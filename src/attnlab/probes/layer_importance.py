"""Layer importance by input-output similarity (paper 31, LLM-Drop "What matters in transformers").

For the attention sublayer of layer ``l`` with input ``X`` (the residual stream entering the
block) and contribution ``Attn(LN X)``:

    S_l = mean over tokens of cos(X, X + Attn(LN X))

A sublayer whose output barely turns the residual stream has ``S_l`` near 1 and is redundant:
LLM-Drop drops the attention sublayers with the highest similarity. The block-level variant uses
the whole block, ``cos(X_in, X_out)``. Hidden states come from the hooks of
:func:`attnlab.models.hf.instrument`; attention probabilities are not needed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.core.site import Site
from attnlab.probes._base import Findings, SiteProbe, register

__all__ = ["LayerImportance"]


@register("layer_importance", paper="31")
class LayerImportance(SiteProbe):
    """Per layer: ``S_l`` of the attention sublayer and of the block; the ranking by redundancy.

    Paper: 31 (LLM-Drop).
    Shapes: ``attention`` and ``block`` map layer -> mean cosine similarity over all tokens seen.

    Importance is ``1 − S``. A sublayer whose contribution is zero scores ``S = 1`` exactly.
    """

    observes_attention = False

    def observe_sublayer(self, layer: int, x_in: Tensor, attn_out: Tensor) -> None:
        """Block input ``X`` and attention contribution ``Attn(LN X)``, both ``[B, T, C]``."""
        self._add("attention", layer, x_in, x_in + attn_out)

    def observe_block(self, layer: int, x_in: Tensor, x_out: Tensor) -> None:
        """Block input and output ``[B, T, C]``."""
        self._add("block", layer, x_in, x_out)

    def _add(self, kind: str, layer: int, a: Tensor, b: Tensor) -> None:
        cos = F.cosine_similarity(a.double(), b.double(), dim=-1)  # [B, T]
        acc = self._acc.setdefault(kind, {}).setdefault(layer, [0.0, 0])
        acc[0] += float(cos.sum())
        acc[1] += cos.numel()

    def result(self) -> dict:
        """``attention``/``block``: ``{layer: S_l}``; ``ranking``: attention layers, most redundant first."""
        out = {kind: {layer: s / n for layer, (s, n) in sorted(d.items())} for kind, d in self._acc.items()}
        out["ranking"] = sorted(out.get("attention", {}), key=lambda layer: -out["attention"][layer])
        return out

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings()
        for kind in ("attention", "block"):
            if r.get(kind):
                out.bar(
                    f"importance_{kind}", f"importance 1 − S ({kind})", [1.0 - r[kind].get(s.layer, float("nan")) for s in sites]
                )  # NaN: a layer not observed
        if r["ranking"]:
            out.table(
                "redundancy_ranking",
                "attention sublayers, most redundant first",
                [
                    {"rank": i + 1, "layer": layer, "S": round(r["attention"][layer], 4), "importance": round(1 - r["attention"][layer], 4)}
                    for i, layer in enumerate(r["ranking"])
                ],
            )
            out.notes.append(
                f"Most redundant attention sublayers (LLM-Drop would drop first): {', '.join(map(str, r['ranking'][:4]))}; most important: {r['ranking'][-1]}."
            )
        return out
