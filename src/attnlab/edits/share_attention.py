"""Paper 14 (EchoAtt, "Attend, copy, then adjust"): later layers reuse an earlier layer's attention probabilities.

EchoAtt without its distillation step. A target layer ``t`` replaces its probabilities by those its
source layer ``s ≤ t`` computed in the same forward pass and keeps its own values and output
projection:

    P_t ← P_s = softmax(Q_s K_sᵀ · scale, masked),        out_t = P_s · V_t

Query heads map one to one (under GQA, target head ``h`` applies source head ``h``'s probabilities to
its own key/value group's values) and the target must see the keys the source saw (a source row with
mass on a key the target cannot see raises). The source's probabilities are recorded by
:class:`attnlab.mechanisms.shared.CaptureProbs` chunk by chunk of query rows; decode steps with a
KV cache share the new row the same way. Memory: the source's whole map, ``O(B·H·Tq·Tk)`` per source.

Which layers:

- ``source=s, targets=t1+t2`` or ``pairs=s>t+s2>t2`` (chains resolve to the first layer: ``2>3, 3>4``
  makes layer 4 reuse layer 2);
- ``top=n`` (calibration, :func:`attnlab.runs.calibrate.calibrate`): the similarity of layers ``l`` and ``m`` is
  ``S(l, m) = mean over heads h and windows of cos(vec A_l,h, vec A_m,h)`` on a calibration text
  (default: 2 windows of 256 tokens of *Lucrece*); the ``n`` targets ``t`` with the highest
  ``S(t−1, t)`` are chosen, and a run of consecutive targets ``t..t+k`` forms a block whose later
  layers all reuse layer ``t−1`` (EchoAtt: "later layers of a block reuse the first layer's");
- ``random=n`` with ``seed``: ``n`` targets drawn among layers ``1..L−1``, in blocks the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.core.site import AttentionChunk, Probe, Site
from attnlab.edits._base import SiteEdit, as_list, integers, register, text_windows
from attnlab.mechanisms.shared import CaptureProbs

__all__ = ["ShareAttention", "Similarity"]


class Similarity(Probe):
    """``S(l, m)``: mean over heads and inputs of ``cos(vec A_l,h, vec A_m,h)``, the attention maps of the first sequence.

    Paper: 14 (EchoAtt).
    Shapes: keeps each layer's map ``[H, T, T]`` during an input; :meth:`result` is ``[L, L]`` float64.
    A run calls :meth:`begin` / :meth:`end` around each input.
    """

    def __init__(self):
        self.maps: dict[int, Tensor] = {}
        self.total: Tensor | None = None
        self.inputs = 0

    def begin(self, input_ids: Tensor, tokens: list[str]) -> None:
        self.maps = {}

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        p = chunk.probs[0]  # [H, Tc, Ts]
        m = self.maps.setdefault(site.layer, p.new_zeros(p.shape[0], chunk.lk, chunk.lk))
        m[:, chunk.q_idx, chunk.kv_start : chunk.kv_start + p.shape[-1]] = p

    def end(self) -> None:
        maps = torch.stack([m for _, m in sorted(self.maps.items())]).double()  # [L, H, T, T]
        v = F.normalize(maps.flatten(2), dim=-1)  # [L, H, T·T]
        s = torch.einsum("lhx,mhx->lm", v, v) / v.shape[1]  # [L, L] mean cosine over heads
        self.total = s if self.total is None else self.total + s
        self.inputs += 1
        self.maps = {}

    def result(self) -> Tensor:
        """``[L, L]``: the mean over the inputs seen."""
        if self.total is None:
            raise ValueError("share_attention: the similarity saw no input: run it on calibration windows first")
        return (self.total / self.inputs).cpu()


@register("share_attention", paper="14")
class ShareAttention(SiteEdit):
    """Target layers take their source layer's attention probabilities, captured in the same pass.

    Paper: 14 (EchoAtt: attend, copy, then adjust), without distillation.
    Shapes: a target's rows ``[B, H, Tc, Ts]`` are replaced by the source's rows for the same
    queries and keys; ``similarity`` is ``[L, L]`` after calibration.

    Args:
        source: the layer whose probabilities are reused, with ``targets``.
        targets: layers that reuse ``source``'s probabilities.
        pairs: ``(source, target)`` pairs, or strings ``"s>t"``.
        top: share the ``n`` most similar adjacent layers (needs calibration: :func:`attnlab.runs.calibrate.calibrate`).
        random: share ``n`` random layers, drawn with ``seed``.
        seed: the seed of ``random``.
        sites: site selection.

    Give ``source`` and ``targets``, or ``pairs``, or ``top``, or ``random``. ``top=0`` shares nothing.

    Example:
        >>> import attnlab
        >>> e = ShareAttention(source=0, targets=[1])
        >>> q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        >>> with attnlab.attach(edits=[e]):
        ...     _ = attnlab.attend(q, k, v, is_causal=True, site=Site("a", layer=0))
        ...     attnlab.attend(k, q, v, is_causal=True, site=Site("b", layer=1)).shape
        torch.Size([1, 2, 5, 4])
    """

    stage = "probs"
    with_sliding_window = False
    caveat = (
        "a layer reuses only probabilities over keys it sees: a global layer's shared into a sliding-window layer "
        "(Gemma 2 and 3 alternate them) is refused; layers of one window (Mistral) share"
    )

    def __init__(self, source=None, targets=None, pairs=None, top=None, random=None, seed=0, sites=None):
        ways = {
            "source/targets": source is not None or targets is not None,
            "pairs": pairs is not None,
            "top": top is not None,
            "random": random is not None,
        }
        if sum(ways.values()) != 1 or (ways["source/targets"] and (source is None or targets is None)):
            raise ValueError(
                f"share_attention: give source= with targets=, or pairs=, or top=n, or random=n; got {[k for k, v in ways.items() if v] or 'none'} "
                "(e.g. share_attention:source=4,targets=5+6)"
            )
        super().__init__(sites=sites)
        (self.seed,) = integers([seed], "seed", "share_attention")
        self.n, self.rule = None, next(k for k, v in ways.items() if v)
        self.similarity: Tensor | None = None
        self.pairs: dict[int, int] | None = None  # target -> source
        if source is not None:
            (src,) = integers([source], "source", "share_attention")
            self._set([(src, t) for t in integers(targets, "targets", "share_attention")])
        elif pairs is not None:
            self._set([_pair(x) for x in as_list(pairs)])
        else:
            n = top if top is not None else random
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"share_attention: {self.rule}= is a number of target layers >= 0, got {n!r}")
            self.n = n
            if n == 0:
                self._set([])
        self._cache: dict[int, Tensor] = {}

    def _set(self, pairs: list[tuple[int, int]]) -> None:
        for s, t in pairs:
            if not 0 <= s <= t:
                raise ValueError(f"share_attention: a source runs before its target (0 <= source <= target), got {s}>{t}")
        targets = dict(sorted((t, s) for s, t in pairs))
        if len(targets) != len(pairs):
            raise ValueError(f"share_attention: each target has one source, got {pairs}")
        for t, s in targets.items():  # chains: a source that is itself a target gives its own source
            targets[t] = targets.get(s, s) if s != t else s
        self.pairs = targets
        self.captures = {s: CaptureProbs(lambda site, s=s: site.layer == s) for s in sorted(set(targets.values()))}
        self.layers = sorted(set(targets) | set(targets.values()))

    def _blocks(self, chosen: list[int]) -> None:
        """Targets in runs of consecutive layers share the layer before the run."""
        self._set([(t - 1, t) for t in sorted(chosen)])

    # --- choosing the layers by similarity --------------------------------------------------------

    @property
    def calibration(self) -> str | None:
        """``top``/``random`` choose their pairs from the similarity of a calibration text: ``"probe"`` until chosen."""
        return "probe" if self.pairs is None else None

    def calibration_inputs(self, tokenizer, *, text: str = "lucrece", windows: int = 2, window: int = 256) -> list[Tensor]:
        """``windows`` windows of ``window`` tokens of ``text`` (a shipped text's name or raw text)."""
        return text_windows(tokenizer, text, windows, window, what="share_attention: the calibration text")

    def calibration_probe(self) -> Similarity:
        """``S(l, m)`` over the calibration windows."""
        return Similarity()

    def calibrated(self, result: Similarity) -> None:
        """Keep ``S``; for ``top=n``/``random=n`` choose the targets."""
        self.similarity = result.result()
        self._choose(self.similarity.shape[0])

    def _choose(self, n_layers: int) -> None:
        if self.n is None or self.pairs is not None:
            return
        if self.n > n_layers - 1:
            raise ValueError(f"share_attention: {self.rule}={self.n} but only layers 1..{n_layers - 1} can reuse an earlier one")
        if self.rule == "random":
            chosen = (torch.randperm(n_layers - 1, generator=torch.Generator().manual_seed(self.seed))[: self.n] + 1).tolist()
        else:
            adjacent = torch.tensor([float(self.similarity[t - 1, t]) for t in range(1, n_layers)])
            chosen = (torch.argsort(adjacent, descending=True, stable=True)[: self.n] + 1).tolist()
        self._blocks(chosen)

    # --- the edit ----------------------------------------------------------------------------------

    def at(self, site: Site) -> Callable | None:
        if self.pairs is None:
            raise ValueError(
                f"share_attention: {self.rule}={self.n} needs the layers chosen: calibrate it first (attnlab.runs.calibrate.calibrate(edit, model, tokenizer))"
            )
        return self.function(site) if self.acts_at(site) else None

    def function(self, site: Site) -> Callable | None:
        capture = self.captures.get(site.layer)
        record = capture.at(site) if capture is not None else None
        source = self.pairs.get(site.layer)
        if record is None and source is None:
            return None

        def share(probs: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            if record is not None:
                probs = record(probs, q_idx, kv_idx)  # a source records its own rows first
            return probs if source is None else self._replace(source, site, probs, q_idx, kv_idx)

        return share

    def _replace(self, source: int, site: Site, probs: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        B, H, Tc, Ts = probs.shape
        held = self._cache.get(source)
        if held is None or int(q_idx[0]) == 0 or int(q_idx[-1]) >= held.shape[2]:  # a new pass (or the rows just recorded)
            held = self._cache[source] = self.captures[source].probs()  # [B, H, Tq, Tk]
        if held.shape[:2] != (B, H) or int(q_idx[-1]) >= held.shape[2]:
            raise ValueError(
                f"share_attention: {site.name} has [B, H, Tq] rows up to {[B, H, int(q_idx[-1]) + 1]} but layer {source} gave "
                f"{list(held.shape[:3])}: heads map one to one, and the source must run on the same queries first"
            )
        src = held[:, :, q_idx]  # [B, H, Tc, Tk_src]
        if len(kv_idx) and int(kv_idx[-1]) >= src.shape[-1]:
            src = F.pad(src, (0, int(kv_idx[-1]) + 1 - src.shape[-1]))  # keys the source never saw: probability 0
        out = src[..., kv_idx]  # [B, H, Tc, Ts]
        hidden = (probs == 0).all(1, keepdim=True)  # [B, 1, Tc, Ts] keys no head of the target sees: its mask
        lost = (src.sum(-1) - out.sum(-1) + torch.where(hidden, out, 0.0).sum(-1)).abs().amax() if out.numel() else 0.0
        if lost > 1e-5:
            raise ValueError(
                f"share_attention: layer {source} puts mass {float(lost):.3g} on keys {site.name} cannot see: the target must see the keys its source sees"
            )
        return out.to(probs.dtype)

    def validate(self, sites: Sequence[Site]) -> None:
        """Check the layers; ``random=n`` draws its targets now (it needs only the number of layers)."""
        if self.rule == "random":
            self._choose(len(sites))
        if self.n is not None and self.n > len(sites) - 1:
            raise ValueError(f"share_attention: {self.rule}={self.n} but only layers 1..{len(sites) - 1} can reuse an earlier one")
        super().validate(sites)

    def __repr__(self) -> str:
        return f"ShareAttention({self.rule}, pairs={self.pairs})"


def _pair(x) -> tuple[int, int]:
    if isinstance(x, (tuple, list)) and len(x) == 2:
        s, t = integers(list(x), "pairs", "share_attention")
        return s, t
    parts = str(x).split(">")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"share_attention: a pair is written source>target (e.g. 4>5) or given as (4, 5), got {x!r}")
    return int(parts[0]), int(parts[1])
