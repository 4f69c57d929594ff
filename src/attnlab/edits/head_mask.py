"""Papers 33 (Retrieval heads) and 5 (Circuit component reuse): ablate chosen attention heads.

transformers v5 removed ``head_mask``; this edit is how attnlab ablates heads. For a chosen head
``h`` of layer ``l``, with per-head output ``o_h = A_h V_h`` (``[B, Tq, D]``, before ``o_proj``):

- ``mode="zero"`` (output stage):     ``o_h ← 0``: the head adds nothing to the block output.
- ``mode="uniform"`` (logits stage):  ``ℓ_h[q, k] ← 0`` for every key ``k`` that ``q`` may see, so
  ``A_h[q, k] = 1 / n_q`` over its ``n_q`` visible keys. The Retrieval Head paper's code masks a
  head by zeroing its queries (``q_h = 0`` makes every logit 0 before the causal mask); setting the
  logits to 0 is the same distribution and also ignores a bias. Keys hidden by the mask or by an
  earlier edit (``−∞``) stay hidden.
- ``mode="mean"`` (output stage):     ``o_h[b, t] ← ō_h``, the head's mean output over every token
  of a reference set (mean ablation, the circuit-analysis ablation that paper 5 builds on).
  Calibration (:func:`attnlab.runs.calibrate.calibrate`) computes ``ō`` with :class:`HeadOutputs`
  over reference texts; a ``mean`` mask that was not calibrated raises.

Heads are written ``heads=L18H6+L17H3`` (pairs) or ``layers=3+4`` with ``heads=0+5`` (the same
heads in each listed layer); ``heads`` alone acts on every layer; ``heads=[]`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core.site import Edit, Site, site_matcher
from attnlab.data import tokens
from attnlab.edits._base import SiteEdit, _value, as_list, parse_heads, register

__all__ = ["HeadEdit", "HeadMask", "HeadOutputs", "head_selected"]

MODES = ("zero", "uniform", "mean")


def head_selected(h: Tensor, heads: Sequence[int]) -> Tensor:
    """Elementwise ``h ∈ heads`` for a broadcasting index tensor of any rank (flex's scalars too)."""
    out = h == heads[0]
    for x in heads[1:]:
        out = out | (h == x)
    return out


class HeadEdit(SiteEdit):
    """A :class:`SiteEdit` that acts on chosen heads, given as ``L{layer}H{head}`` pairs or per layer.

    Args:
        heads: ``"L18H6"``, ``["L18H6", "L17H3"]``, ``[(18, 6)]`` (pairs), or head indices
            ``[0, 5]`` applied in each layer of ``layers`` (every layer if ``layers`` is None);
            None: every head of ``layers``; ``[]``: no head (the edit does nothing).
        layers: layer indices, only with head indices (pairs name their layers).
        sites: site selection (a name, glob, list or predicate; None: every site).

    A subclass whose default is every head (``require_heads = False``) may be given neither.
    """

    require_heads = True  # False: with neither heads nor layers, act on every head of every layer

    def __init__(self, heads=None, layers=None, sites=None):
        items = as_list(_value(heads) if isinstance(heads, str) else heads)  # "L1H2+L3H0" as in specs
        layers = as_list(_value(layers) if isinstance(layers, str) else layers)
        for x in [*(items or []), *(layers or [])]:
            if isinstance(x, (bool, float)):
                raise TypeError(f"heads and layers are integers or L{{layer}}H{{head}} pairs, got {x!r}")
        if heads is None and layers is None and self.require_heads:
            raise ValueError("name the heads: heads=L18H6+L17H3, or layers=3+4 with heads=0+5 (heads=[] for no head)")
        self.by_layer: dict[int, list[int]] | None = None
        if items and any(isinstance(x, (str, tuple)) for x in items):
            if layers is not None:
                raise ValueError(
                    f"heads given as L{{layer}}H{{head}} pairs name their layers: drop layers={layers!r}, or give heads as indices"
                )
            by_layer: dict[int, set[int]] = {}
            for layer, head in parse_heads(items):
                by_layer.setdefault(layer, set()).add(head)
            super().__init__(layers=sorted(by_layer), heads=None, sites=sites)
            self.by_layer = {layer: sorted(hs) for layer, hs in by_layer.items()}
        else:
            super().__init__(layers=layers, heads=items, sites=sites)

    def heads_at(self, site: Site) -> list[int] | None:
        """Head indices this edit acts on at ``site`` (None: every head)."""
        if self.by_layer is not None:
            return self.by_layer.get(site.layer, [])
        return self.heads

    def at(self, site: Site) -> Callable | None:
        if not self.acts_at(site) or self.heads_at(site) == [] or self.is_noop():
            return None
        return self.function(site)

    def is_noop(self) -> bool:
        """Whether the edit's settings change nothing (then it binds nowhere: bit-identical)."""
        return False

    def validate(self, sites: Sequence[Site]) -> None:
        super().validate(sites)
        n_heads = sites[0].num_heads if sites else None
        for layer, heads in (self.by_layer or {}).items():
            for h in heads:
                if n_heads is not None and not 0 <= h < n_heads:
                    raise ValueError(f"{self.name}: head L{layer}H{h} is out of range: the model has heads 0..{n_heads - 1}")

    def head_index(self, site: Site, H: int, device) -> Tensor:
        """The chosen heads at ``site`` as an index tensor, checked against ``H`` heads."""
        heads = self.heads_at(site)
        if heads is None:
            return torch.arange(H, device=device)
        if max(heads) >= H:
            raise ValueError(f"{self.name}: head {max(heads)} is out of range at {site.name}: it has heads 0..{H - 1}")
        return torch.tensor(heads, device=device)

    shown: tuple[str, ...] = ()  # option attributes a subclass shows in its repr

    def __repr__(self) -> str:
        heads = [f"L{layer}H{h}" for layer, hs in self.by_layer.items() for h in hs] if self.by_layer is not None else self.heads
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in self.shown)
        return f"{type(self).__name__}(heads={heads}, layers={None if self.by_layer is not None else self.layers}{extra})"


class HeadOutputs(Edit):
    """An ``"output"`` edit that records per-head outputs at the sites it selects, unchanged.

    Per site it keeps the sum over batch and positions (``[H, D]``, float64), the number of
    positions summed, and the output at the last query position (``[B, H, D]``). Each call
    adds to the sums and replaces ``last``.

    Paper: 33, 5 (mean ablation), 26 (VHD compares head outputs).
    Shapes: ``mean()[site] [H, D]``; ``last[site] [B, H, D]``.

    Example:
        >>> import attnlab
        >>> rec = HeadOutputs()
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> _ = attnlab.attend(q, k, v, is_causal=True, edits=[rec])
        >>> rec.mean()["attend"].shape
        torch.Size([2, 4])
    """

    stage = "output"

    def __init__(self, sites=None):
        self._match = site_matcher(sites)
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Tensor] = {}

    def at(self, site: Site) -> Callable | None:
        if not self._match(site):
            return None

        def record(out: Tensor) -> Tensor:  # [B, H, Tq, D]
            B, H, Tq, D = out.shape
            s = out.detach().double().sum((0, 2))  # [H, D]
            self.sums[site.name] = self.sums[site.name] + s if site.name in self.sums else s
            self.counts[site.name] = self.counts.get(site.name, 0) + B * Tq
            if Tq:
                self.last[site.name] = out[:, :, -1].detach()  # [B, H, D]
            return out

        return record

    def mean(self) -> dict[str, Tensor]:
        """Per site, each head's mean output over every position recorded, ``[H, D]`` float32."""
        return {name: (s / max(1, self.counts[name])).float() for name, s in self.sums.items()}


@register("head_mask", paper="33, 5")
class HeadMask(HeadEdit):
    """Ablate chosen heads: zero their output, make their attention uniform, or use their mean output.

    Paper: 33 (Retrieval heads: masking them breaks needle recall), 5 (Circuit component reuse).
    Shapes: output stage ``[B, H, Tq, D] -> [B, H, Tq, D]``; logits stage elementwise.

    Args:
        heads: ``L18H6+L17H3`` pairs, or head indices with ``layers`` (see :class:`HeadEdit`).
        layers: layers for head indices.
        mode: ``"zero"``, ``"uniform"`` or ``"mean"`` (needs calibration first:
            :func:`attnlab.runs.calibrate.calibrate`).
        sites: site selection.

    Example:
        >>> import attnlab
        >>> q = k = v = torch.randn(1, 2, 5, 4)
        >>> out = attnlab.attend(q, k, v, is_causal=True, edits=[HeadMask(heads=[1])])
        >>> out[0, 1].abs().sum().item(), out.shape
        (0.0, torch.Size([1, 2, 5, 4]))
    """

    shown = ("mode",)

    def __init__(self, heads=None, layers=None, mode: str = "zero", sites=None):
        super().__init__(heads, layers, sites)
        if mode not in MODES:
            raise ValueError(f"head_mask: mode must be one of {', '.join(MODES)}, got mode={mode!r}")
        self.mode = mode
        self.stage = "logits" if mode == "uniform" else "output"
        self.means: dict[str, Tensor] = {}  # site name -> [H, D], set by calibrate

    @property
    def calibration(self) -> str | None:
        """Only mean ablation needs reference outputs: ``"probe"`` until calibrated."""
        return "probe" if self.mode == "mean" and not self.means else None

    def calibration_inputs(self, tokenizer, texts: str | Sequence[str] | None = None, *, max_tokens: int = 512) -> list[Tensor]:
        """The reference set: ``texts`` (one string or a list; default 4 pieces of 2000 characters of the sonnets), each a sequence of at most ``max_tokens`` tokens, started as the tokenizer starts one."""
        if texts is None:
            from attnlab.data import text

            sonnets = text("sonnets")
            texts = [sonnets[i : i + 2000] for i in range(0, 8000, 2000)]
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("head_mask: calibration needs at least one reference text")
        specials = len(tokens.start_tokens(tokenizer)) + len(tokens.end_tokens(tokenizer))
        return [tokens.sequence(tokenizer, tokens.encode(tokenizer, t)[: max_tokens - specials]) for t in texts]

    def calibration_probe(self) -> HeadOutputs:
        """A recorder of the chosen sites' head outputs (an output edit that changes nothing)."""
        return HeadOutputs(sites=self.acts_at)

    def calibrated(self, result: HeadOutputs) -> None:
        """Keep each chosen site's mean head outputs ``ō [H, D]`` over every token of the reference set."""
        if not result.sums:
            raise ValueError("head_mask: calibration recorded no site: calibrate on an instrumented model and check layers/sites")
        self.means = result.mean()

    def input_probe(self, input_ids: Tensor) -> None:
        """Nothing to see; a ``mean`` mask that was not calibrated raises here, before the edited pass."""
        if self.mode == "mean" and not self.means and self.heads != []:
            raise ValueError(
                "head_mask mode='mean' is not calibrated: call attnlab.runs.calibrate.calibrate(edit, model, tokenizer, texts=[...]) "
                "before the edited forward"
            )
        return None

    def function(self, site: Site) -> Callable:
        if self.mode == "uniform":
            heads = self.heads_at(site)
            if heads is None:
                return lambda s, b, h, q_idx, kv_idx: torch.where(torch.isneginf(s), s, torch.zeros_like(s))
            return lambda s, b, h, q_idx, kv_idx: torch.where(head_selected(h, heads) & ~torch.isneginf(s), torch.zeros_like(s), s)
        if self.mode == "zero":
            return lambda out: out.index_fill(1, self.head_index(site, out.shape[1], out.device), 0.0)
        if site.name not in self.means:
            raise ValueError(
                f"head_mask mode='mean' has no mean outputs for {site.name}: calibrate it first "
                "(attnlab.runs.calibrate.calibrate(edit, model, tokenizer, texts=[...]))"
            )
        mean = self.means[site.name]  # [H, D]

        def replace(out: Tensor) -> Tensor:  # [B, H, Tq, D]
            B, H, Tq, D = out.shape
            if mean.shape != (H, D):
                raise ValueError(
                    f"head_mask: calibrated means at {site.name} are {tuple(mean.shape)}, the output has [H, D] = {[H, D]}: recalibrate on this model"
                )
            idx = self.head_index(site, H, out.device)
            fill = mean.to(out.device, out.dtype)[idx][None, :, None, :].expand(B, len(idx), Tq, D)  # [B, k, Tq, D]
            return out.index_copy(1, idx, fill)

        return replace
