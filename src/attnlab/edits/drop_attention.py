"""Paper 31 (LLM-Drop, "What matters in transformers? Not all attention is needed"): drop attention sublayers.

A dropped layer's attention sublayer adds nothing to the residual stream, so the block computes

    h = X + Attn(LN X)  →  h = X,        block output = X + MLP(LN' X)   (pre-LN blocks)

Which layers: named (``layers=3+7``), or ranked by the ``layer_importance`` probe
(:class:`attnlab.probes.LayerImportance`) on a calibration text,

    S_l = mean over tokens of cos(X, X + Attn(LN X)),   importance 1 − S_l,

``top=n`` dropping the ``n`` most redundant sublayers (highest ``S_l``: LLM-Drop's choice),
``bottom=n`` the ``n`` least redundant, ``random=n`` ``n`` layers drawn with ``seed``. The ranking is
computed once by calibration (:func:`attnlab.runs.calibrate.calibrate`; default: 4 windows of 256
tokens of *Lucrece*, held out from the Tempest perplexity of :mod:`attnlab.runs.evaluate`), or,
without it, on the first input the edit is prepared on (:func:`attnlab.runs.edit.prepare`), and kept.
The edit declares the :class:`~attnlab.probes.LayerImportance` probe; runs attach it to unedited
passes and hand it back.

Implementation: an ``"output"``-stage edit zeroes the per-head outputs (enough for ``attend`` calls
and for output projections without a bias), and :meth:`DropAttention.sublayer` zeroes the dropped
layer's whole contribution to the residual stream (``self_attn``'s output, GPT-2's ``attn``, BERT's
output dense): an output projection with a bias (GPT-2's ``c_proj``) would otherwise still add the
bias. The hook graph of every model (Hugging Face and TinyTransformer) applies it at
``layers.{i}.attn.out``, before probes see the contribution (so ``layer_importance`` sees the
zero and scores ``S = 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core.site import Site
from attnlab.edits._base import SiteEdit, integers, register, text_windows
from attnlab.probes import LayerImportance

__all__ = ["DropAttention"]


@register("drop_attention", paper="31")
class DropAttention(SiteEdit):
    """Skip the attention sublayers of chosen layers: their contribution to the residual stream is 0.

    Paper: 31 (LLM-Drop, what matters in transformers).
    Shapes: per-head outputs ``[B, H, Tq, D]`` become zeros; the contribution module's output
    ``[B, T, C]`` too (:meth:`sublayer`, applied by the hook graph).

    Args:
        layers: layers to drop (``[]``: none).
        top: drop the ``n`` most redundant attention sublayers (highest ``S_l``).
        bottom: drop the ``n`` least redundant ones.
        random: drop ``n`` layers drawn at random with ``seed``.
        seed: the seed of ``random``.
        sites: site selection.

    Give exactly one of ``layers``, ``top``, ``bottom``, ``random``; ``top=0`` and ``layers=[]`` drop
    nothing.

    Example:
        >>> e = DropAttention(layers=[1])
        >>> e.at(Site("layers.1.attn", layer=1))(torch.ones(1, 2, 3, 4)).abs().sum()
        tensor(0.)
    """

    stage = "output"

    def __init__(self, layers=None, top=None, bottom=None, random=None, seed=0, sites=None):
        given = {k: v for k, v in (("layers", layers), ("top", top), ("bottom", bottom), ("random", random)) if v is not None}
        if len(given) != 1:
            raise ValueError(
                f"drop_attention: give exactly one of layers=3+7, top=n, bottom=n, random=n; got {given or 'none'} "
                "(e.g. drop_attention:top=4 drops the 4 most redundant attention sublayers)"
            )
        super().__init__(sites=sites)
        (self.rule, value), self.n = next(iter(given.items())), None
        if self.rule == "layers":
            self.layers = sorted(set(integers(value, "layers", "drop_attention")))
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"drop_attention: {self.rule}= is a number of layers >= 0, got {value!r}")
            self.n = value
            self.layers = [] if value == 0 else None  # None: not chosen yet (calibration or the first input)
        (self.seed,) = integers([seed], "seed", "drop_attention")
        self.ranking: list[int] | None = None  # attention sublayers, most redundant first
        self.similarity: dict[int, float] | None = None  # S_l per layer

    # --- choosing the layers: declared probe, measured by a run ------------------------------------

    @property
    def calibration(self) -> str | None:
        """``top``/``bottom``/``random`` choose layers from a ranking: ``"probe"`` until chosen."""
        return "probe" if self.layers is None else None

    def calibration_inputs(self, tokenizer, *, text: str = "lucrece", windows: int = 4, window: int = 256) -> list[Tensor]:
        """``windows`` windows of ``window`` tokens of ``text`` (a shipped text's name or raw text)."""
        return text_windows(tokenizer, text, windows, window, what="drop_attention: the calibration text")

    def calibration_probe(self) -> LayerImportance:
        """The ranking's probe: ``S_l`` of every attention sublayer over the calibration passes."""
        return LayerImportance()

    def calibrated(self, result: LayerImportance) -> None:
        """Keep the ranking and choose the layers."""
        self._rank(result)

    def input_probe(self, input_ids: Tensor) -> LayerImportance | None:
        """Without calibration, the first input ranks the layers (``random`` needs no ranking)."""
        return LayerImportance() if self.layers is None and self.rule != "random" else None

    def prepared(self, probe: LayerImportance) -> None:
        self._rank(probe)

    def _rank(self, probe: LayerImportance) -> None:
        r = probe.result()
        self.similarity, self.ranking = r["attention"], r["ranking"]
        self._choose(len(self.ranking))

    def _choose(self, n_layers: int) -> None:
        if self.n is None:
            return
        if self.n > n_layers:
            raise ValueError(f"drop_attention: {self.rule}={self.n} but the model has {n_layers} layers")
        if self.rule == "random":
            self.layers = sorted(torch.randperm(n_layers, generator=torch.Generator().manual_seed(self.seed))[: self.n].tolist())
        else:
            order = self.ranking if self.rule == "top" else self.ranking[::-1]
            self.layers = sorted(order[: self.n])

    # --- the edit --------------------------------------------------------------------------------

    def at(self, site: Site) -> Callable | None:
        if self.layers is None:
            raise ValueError(
                f"drop_attention: {self.rule}={self.n} needs the layers ranked: calibrate it (attnlab.runs.calibrate.calibrate(edit, model, "
                "tokenizer)) or prepare it on the input (attnlab.runs.edit.prepare(model, [edit], input_ids)) first"
            )
        if not self.acts_at(site):
            return None
        return self.function(site)

    def function(self, site: Site) -> Callable:
        return torch.zeros_like  # [B, H, Tq, D] per-head outputs -> 0

    def sublayer(self, layer: int) -> Callable | None:
        """A dropped layer's contribution to the residual stream ``[B, T, C]`` becomes zeros."""
        return torch.zeros_like if layer in (self.layers or []) else None

    def validate(self, sites: Sequence[Site]) -> None:
        """Check the layers; ``random=n`` draws them now. A run that binds the edit applies :meth:`sublayer`."""
        if self.layers is None and self.rule == "random":
            self._choose(len(sites))
        if self.n is not None and self.n > len(sites):
            raise ValueError(f"drop_attention: {self.rule}={self.n} but the model has {len(sites)} layers")
        super().validate(sites)

    def __repr__(self) -> str:
        chosen = "" if self.rule == "layers" else f"{self.rule}={self.n}, "
        return f"DropAttention({chosen}layers={self.layers})"
