"""Paper 31 (LLM-Drop, "What matters in transformers? Not all attention is needed"): drop attention sublayers.

A dropped layer's attention sublayer adds nothing to the residual stream, so the block computes

    h = X + Attn(LN X)  →  h = X,        block output = X + MLP(LN' X)   (pre-LN blocks)

Which layers: named (``layers=3+7``), or ranked by the ``layer_importance`` probe
(:class:`attnlab.probes.LayerImportance`) on a calibration text,

    S_l = mean over tokens of cos(X, X + Attn(LN X)),   importance 1 − S_l,

``top=n`` dropping the ``n`` most redundant sublayers (highest ``S_l``: LLM-Drop's choice),
``bottom=n`` the ``n`` least redundant, ``random=n`` ``n`` layers drawn with ``seed``. The ranking is
computed once by :meth:`DropAttention.calibrate` (default: 4 windows of 256 tokens of *Lucrece*, held
out from the Tempest perplexity of :mod:`attnlab.evaluate`), or, without it, by the first
:meth:`DropAttention.prepare` on the input it is given, and cached.

Implementation: an ``"output"``-stage edit zeroes the per-head outputs (enough for ``attend`` calls
and for output projections without a bias). On a model, :meth:`~DropAttention.prepare` also
installs a forward hook on each dropped layer's contribution module (``self_attn``, GPT-2's
``attn``, BERT's output dense) that replaces its output with zeros while the edit is attached: an
output projection with a bias (GPT-2's ``c_proj``) would otherwise still add the bias. The hooks run
before the probes' hooks (so ``layer_importance`` sees the zero and scores ``S = 1``) and do
nothing when the edit is not attached; :meth:`~DropAttention.close` (or ``with edit:``) removes them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.core import attach, attached
from attnlab.core.site import Site
from attnlab.edits._base import SiteEdit, as_list, register

__all__ = ["DropAttention"]


@register("drop_attention")
class DropAttention(SiteEdit):
    """Skip the attention sublayers of chosen layers: their contribution to the residual stream is 0.

    Paper: 31 (LLM-Drop, what matters in transformers).
    Shapes: per-head outputs ``[B, H, Tq, D]`` become zeros; the contribution module's output
    ``[B, T, C]`` too (through a hook installed by :meth:`prepare`).

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
            self.layers = sorted({int(x) for x in as_list(value)})
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"drop_attention: {self.rule}= is a number of layers >= 0, got {value!r}")
            self.n = value
            self.layers = [] if value == 0 else None  # None: not chosen yet (calibrate or prepare)
        self.seed = int(seed)
        self.ranking: list[int] | None = None  # attention sublayers, most redundant first
        self.similarity: dict[int, float] | None = None  # S_l per layer
        self._hooks: dict[int, object] = {}  # id(contribution module) -> hook handle
        self._hooked: set[str] = set()  # module paths of hooked attention modules
        self._busy = False

    @property
    def needs_calibration(self) -> bool:
        """``top``/``bottom``/``random`` choose layers from a ranking that ``calibrate`` computes."""
        return self.layers is None

    # --- choosing the layers ---------------------------------------------------------------------

    def calibrate(self, model, tokenizer, *, text: str = "lucrece", windows: int = 4, window: int = 256) -> DropAttention:
        """Rank the attention sublayers on a calibration text once, choose the layers, install the hooks.

        Args:
            text: a shipped text's name (``lucrece``, ``sonnets``, ``tempest``) or raw text.
            windows: number of windows of ``window`` tokens that the ranking averages over.

        Returns:
            ``self``, so that ``DropAttention(top=4).calibrate(model, tok)`` can be passed on.
        """
        from attnlab.data import TEXTS
        from attnlab.data import text as shipped

        ids = tokenizer(shipped(text) if text in TEXTS else text, return_tensors="pt")["input_ids"][0]
        if ids.numel() < windows * window:
            raise ValueError(
                f"drop_attention: the calibration text has {ids.numel()} tokens, fewer than windows × window = {windows * window}"
            )
        self._rank(model, [ids[w * window : (w + 1) * window][None] for w in range(windows)])
        self._install(model)
        return self

    def prepare(self, model, input_ids: Tensor) -> None:
        """Choose the layers if not done yet (ranking on ``input_ids``, once) and install the hooks."""
        if self.layers is None and self.rule != "random":
            self._rank(model, [input_ids])
        self._install(model)

    def _rank(self, model, inputs: list[Tensor]) -> None:
        from attnlab.models import hf
        from attnlab.probes import LayerImportance

        if not getattr(model, "_attnlab_hooks", None):
            hf.instrument(model)
        probe = LayerImportance()
        self._busy = True  # attached around this call or not, the edit stays out of the ranking pass
        try:
            with torch.no_grad(), attach(probes=[probe]):
                for ids in inputs:
                    model(input_ids=ids.to(next(model.parameters()).device))
        finally:
            self._busy = False
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

    # --- the hooks -------------------------------------------------------------------------------

    def _install(self, model) -> None:
        from attnlab.models import hf

        if not getattr(model, "_attnlab_hooks", None):
            hf.instrument(model)
        found = hf.layers(model)
        if self.layers is None:  # random=n: needs only the number of layers
            self._choose(len(found.blocks))
        for layer in self.layers:
            module = found.contrib[layer]
            if id(module) not in self._hooks:
                self._hooks[id(module)] = module.register_forward_hook(self._hook(layer), prepend=True)
            self._hooked.add(found.paths[layer])

    def _hook(self, layer: int) -> Callable:
        def zero(module, args, output):
            if layer not in (self.layers or []) or self._busy or self not in attached()[1]:
                return None  # not attached (or the layer is no longer chosen): the module runs as usual
            if isinstance(output, tuple):
                return (torch.zeros_like(output[0]), *output[1:])  # [B, T, C]
            return torch.zeros_like(output)

        return zero

    def close(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._hooked.clear()

    def __enter__(self) -> DropAttention:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the edit --------------------------------------------------------------------------------

    def at(self, site: Site) -> Callable | None:
        if self._busy:
            return None
        if self.layers is None:
            raise ValueError(
                f"drop_attention: {self.rule}={self.n} needs the layers ranked: call calibrate(model, tokenizer) or prepare(model, input_ids) first"
            )
        if not self.acts_at(site):
            return None
        if site.module_path is not None and site.module_path not in self._hooked:
            raise ValueError(
                f"drop_attention: {site.name} is a model's attention: call prepare(model, input_ids) (or calibrate) before the edited "
                "pass, so that the output projection's bias is dropped too"
            )
        return self.function(site)

    def function(self, site: Site) -> Callable:
        return torch.zeros_like  # [B, H, Tq, D] per-head outputs -> 0

    def validate(self, sites) -> None:
        if self.layers is None and self.rule == "random":
            self._choose(len(sites))
        if self.n is not None and self.n > len(sites):
            raise ValueError(f"drop_attention: {self.rule}={self.n} but the model has {len(sites)} layers")
        super().validate(sites)

    def __repr__(self) -> str:
        chosen = "" if self.rule == "layers" else f"{self.rule}={self.n}, "
        return f"DropAttention({chosen}layers={self.layers})"
