"""Paper 64 (F-LMM): a word's attention over the image tokens, every layer and head, for a mask head.

F-LMM reads, for a word of the text, the attention its tokens give to each image token, in every
layer and head of the frozen language model, and stacks the ``L · H`` maps as the channels of an
image (:class:`attnlab.operators.flmm.FLMMHead` turns them into a mask). This probe keeps only those
rows and columns as the row pass streams each site's attention: ``[B, H, P]`` per site (the mean
over the word's tokens), never a ``T × T`` matrix.

Attach it to a run of the model on the input whose spans it was given; docs/vision-language.md
shows the whole path on a tiny LLaVA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.core.site import AttentionChunk, Site
from attnlab.core.spans import check_span
from attnlab.probes._base import SiteProbe, register
from attnlab.probes.visual_sensitivity import span_columns

__all__ = ["WordToPatch"]


@register("word_to_patch", paper="64")
class WordToPatch(SiteProbe):
    """The mean attention of a word's tokens over the image tokens, per site and head.

    Paper: 64 (F-LMM).
    Shapes: per site ``[B, H, P]`` (``P`` image tokens); :meth:`maps` ``[B, L·H, h, w]``.

    Args:
        word: the word's query positions (``spans["word:cat"]``).
        image: the image token positions (``spans.image``), in patch order (row-major grid).
        sites: which sites to observe.

    Example:
        >>> import attnlab
        >>> p = WordToPatch(word=[5], image=[0, 1, 2, 3])
        >>> q = k = v = torch.randn(1, 2, 6, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, probes=[p])
        >>> p.result()["attend"].shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, word=None, image=None, sites=None):
        super().__init__(sites)
        if not word or not image:
            raise ValueError("word_to_patch needs both spans: word=spans['word:cat'] and image=spans.image (non-empty)")
        self._specs = (word, image)
        self.word = torch.tensor(sorted({int(i) for i in word}))  # [W]
        self.image = torch.tensor(sorted({int(i) for i in image}))  # [P]

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        if not self.wants(site):
            return
        for spec, name in zip(self._specs, ("word", "image")):
            check_span(spec, chunk.lk, f"word_to_patch {name}")
        sel = torch.isin(chunk.q_idx, self.word.to(chunk.q_idx.device))  # [Tc]
        if not bool(sel.any()):
            return
        probs, _ = span_columns(chunk, self.image)  # [B, H, Tc, P]
        rows = probs[:, :, sel].sum(2).float()  # [B, H, P]
        acc = self._acc.setdefault(site.name, [0.0, 0])
        acc[0] = acc[0] + rows
        acc[1] += int(sel.sum())

    def result(self) -> dict[str, Tensor]:
        """Per site: ``[B, H, P]``, the word's rows over the image tokens, averaged over its tokens."""
        return {name: total / n for name, (total, n) in self._acc.items()}

    def maps(self, sites: list[Site], grid: tuple[int, int]) -> Tensor:
        """The maps of ``sites`` (in layer order) stacked as channels on the patch grid: ``[B, L·H, h, w]``."""
        h, w = grid
        if h * w != len(self.image):
            raise ValueError(
                f"word_to_patch: grid {h}×{w} holds {h * w} patches, the image span has {len(self.image)}: give the patch grid"
            )
        found = self.result()
        missing = [s.name for s in sites if s.name not in found]
        if missing:
            raise ValueError(
                f"word_to_patch observed no rows of the word at {missing[:3]}: attach the probe while the model runs on the input"
            )
        stacked = torch.cat([found[s.name] for s in sites], 1)  # [B, L·H, P]
        return stacked.view(stacked.shape[0], -1, h, w)  # [B, L·H, h, w]
