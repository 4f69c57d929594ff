"""Retrieval heads (paper 33, "Retrieval Head Mechanistically Explains Long-Context Factuality").

Scored exactly as the paper's code does: a needle sentence is hidden at some depth of a long
haystack and the model answers a question about it with greedy decoding. At every decode step
(the prefill is not scored), for every head, if the head's top-1 attention falls inside the
needle span and the token there equals the token being generated, the head's score for the trial
grows by ``1 / |needle|``. A trial counts only if the answer recalls the needle (ROUGE-1 recall of
the needle sentence above 50%, by the ``rouge-score`` package with its stemmer, as the paper's
code; :func:`attnlab.runs.needle.rouge1_recall`). A head's retrieval score is its
mean over the counted trials; retrieval heads score above 0.1.

The probe keeps the trials' bookkeeping; :func:`attnlab.runs.needle.needle_in_a_haystack` runs
them (prompts, greedy decoding, ROUGE) and feeds it: :meth:`Retrieval.start_trial`, the decode
steps (:meth:`Retrieval.step`), :meth:`Retrieval.end_trial`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.probes._base import Findings, SiteProbe, grid, kv_group, register

__all__ = ["Retrieval"]


@register("retrieval", paper="33")
class Retrieval(SiteProbe):
    """Per head: the retrieval score of paper 33, from decode steps of needle trials.

    Paper: 33 (retrieval heads).
    Shapes: per site, ``score`` is ``[H]``: mean over recalled trials.

    Driven by :func:`attnlab.runs.needle.needle_in_a_haystack`, which sets the needle span and calls :meth:`step`
    after each decode step and :meth:`end_trial` after each trial.

    Args:
        threshold: score above which a head is a retrieval head (0.1).
        sites: which sites to observe.
    """

    kinds = frozenset({"decoder"})
    needs = "decodes needle answers greedily from next-token logits"

    def __init__(self, threshold: float = 0.1, sites=None):
        super().__init__(sites)
        self.threshold = threshold
        self.prompt_ids: Tensor | None = None
        self.span = (0, 0)
        self._top: dict[str, Tensor] = {}
        self._trial: dict[str, Tensor] = {}
        self.trials: list[dict] = []

    def start_trial(self, prompt_ids: Tensor, span: tuple[int, int]) -> None:
        """A new trial: the prompt's token ids ``[T]`` and the needle's token span ``[start, end)``."""
        self.prompt_ids, self.span = prompt_ids.cpu(), span
        self._trial.clear()

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site) or self.prompt_ids is None:
            return
        p = chunk.probs[0, :, -1]  # [H, Ts]: the newest query row
        self._top[site.name] = (chunk.kv_start + p.argmax(-1)).cpu()  # [H] top-1 key position

    def step(self, token: int) -> None:
        """After a decode step that generated ``token``: credit heads that copied it from the needle."""
        start, end = self.span
        for name, pos in self._top.items():
            inside = (pos >= start) & (pos < end)
            copied = torch.zeros_like(inside)
            copied[inside] = self.prompt_ids[pos[inside]] == token
            self._trial[name] = self._trial.get(name, torch.zeros(pos.shape, dtype=torch.float64)) + copied.double() / (end - start)
        self._top.clear()

    def end_trial(self, recalled: bool, **info) -> None:
        """Close a trial; its scores count only if the answer ``recalled`` the needle."""
        self.trials.append({**info, "recalled": recalled})
        if recalled:
            for name, score in self._trial.items():
                acc = self._acc.setdefault(name, [0.0, 0])
                acc[0] = acc[0] + score
                acc[1] += 1
        self._trial.clear()

    def result(self) -> dict:
        """Per site: ``score [H]`` (mean over recalled trials) and ``trials`` (how many counted)."""
        return {name: {"score": s / n, "trials": n} for name, (s, n) in self._acc.items()}

    def heads(self, sites: Sequence[Site]) -> list[dict]:
        """Retrieval heads (score above the threshold), best first."""
        r = self.result()
        rows = [
            {"layer": s.layer, "head": h, "kv group": kv_group(s, h), "score": round(float(x), 4)}
            for s in sites
            if s.name in r
            for h, x in enumerate(r[s.name]["score"])
            if x > self.threshold
        ]
        return sorted(rows, key=lambda row: -row["score"])

    def findings(self, sites: list[Site]) -> Findings:
        r = self.result()
        out = Findings()
        if r:
            out.heatmap("score", "retrieval score", grid({k: v["score"] for k, v in r.items()}, sites))
        counted = sum(t["recalled"] for t in self.trials)
        out.table(
            "needle_trials",
            "needle trials",
            [{k: v for k, v in t.items() if k != "answer"} | {"answer": t.get("answer", "")[:80]} for t in self.trials],
        )
        heads = self.heads(sites)
        out.table(
            "retrieval_heads",
            f"retrieval heads (score > {self.threshold:g})",
            [{("kv_group" if k == "kv group" else k): v for k, v in h.items()} for h in heads],
        )
        out.notes.append(
            f"Needle recalled in {counted} of {len(self.trials)} trials; {len(heads)} retrieval heads (score > {self.threshold})"
            + (f", strongest layer {heads[0]['layer']} head {heads[0]['head']} ({heads[0]['score']:.2f})." if heads else ".")
        )
        return out
