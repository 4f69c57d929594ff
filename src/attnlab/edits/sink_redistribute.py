"""Papers 47 (ACT, hidden sinks) and 12 (VAR, visual attention sink): take mass off sink keys.

Both edits act on whole rows of probabilities ``A`` (a query ``i`` over keys ``j``). With a sink set
``S``, a target set ``N`` (disjoint from ``S``), ``m_S = Σ_{j∈S} A_ij`` and ``m_N = Σ_{k∈N} A_ik``:

    A'_ij = s · A_ij                              j ∈ S
    A'_ik = A_ik + (1 − s) · m_S · A_ik / m_N     k ∈ N   (pro rata)
    A'_il = A_il                                  otherwise

so each row keeps its sum. A row with ``m_N = 0`` is left unchanged.

- **ACT** (paper 47, Yu et al. 2024, "Unveiling and harnessing hidden attention sinks"): per head,
  ``S`` = columns ``j ≥ 1`` with ``α_j = Σ_q A_qj / #queries that see j > τ [0.1]`` over all the
  queries of the input, ``s = β [0.4]``, ``N`` = every other key (the first token included, as in
  the official code). Only calibrated heads are edited (the search
  :func:`attnlab.runs.calibrate.act_heads` keeps the heads whose edit alone improves a score).
- **VAR** (paper 12, Kang et al. 2025, "See what you are told: visual attention sink in large
  multimodal models"): ``S`` = tokens whose layer input ``x`` has ``max_{d∈D} |x_d| / rms(x) > τ
  [20]`` in the sink dimensions ``D``; ``s = p [0.6]``; ``N`` = the target region (``region``
  positions; the image in the paper, every key by default) minus ``S``. A row is edited when its
  sink share of the region ``Σ_{S∩R} A / Σ_R A ≤ ρ [0.5]`` and its region mass ``Σ_R A ≥ 0.2``.

The row pass sees one chunk of query rows at a time, so ``S`` is found first: before an edited
pass, the edit asks for an unedited pass over the same input (:meth:`SinkRedistribute.input_probe`,
run by :func:`attnlab.runs.edit.prepare`) with a :class:`~attnlab.probes.ColumnMass` probe for
ACT or a block-input probe for VAR, and records the sinks per site and head from it
(:meth:`SinkRedistribute.prepared`; cached per input). For decode steps with a KV cache the pass
on the prompt defines the sinks; keys after the prompt are never sinks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core.site import Probe, Site
from attnlab.core.spans import check_span
from attnlab.edits._base import SiteEdit, as_list, check_selects_a_site, integers, number, parse_heads, register, text_windows
from attnlab.probes import ColumnMass

__all__ = ["BlockInputs", "SinkRedistribute", "redistribute"]

_DEFAULTS = {"act": {"scale": 0.4, "tau": 0.1}, "var": {"scale": 0.6, "tau": 20.0}}
_CACHE_SIZE = 16  # prepared inputs remembered (calibration scores every head on the same inputs)


def redistribute(p: Tensor, sink: Tensor, target: Tensor, scale: float, rows: Tensor | bool = True) -> Tensor:
    """Scale the mass on ``sink`` keys by ``scale`` and give the rest to ``target`` keys pro rata.

    Paper: 47 (ACT), 12 (VAR).
    Shapes: ``p [B, H, Tc, Ts]``; ``sink``/``target`` bool, broadcastable to it; ``rows``
    ``[B|1, H|1, Tc|1, 1]`` bool: which rows to edit. Rows whose target mass is 0 stay as they are.
    """
    m_s = torch.where(sink, p, 0.0).sum(-1, keepdim=True)  # [B, H, Tc, 1]
    m_t = torch.where(target, p, 0.0).sum(-1, keepdim=True)  # [B, H, Tc, 1]
    gain = (1.0 - scale) * m_s / m_t.clamp_min(torch.finfo(p.dtype).tiny)  # freed mass per unit of target mass
    new = torch.where(sink, p * scale, torch.where(target, p + p * gain, p))
    return torch.where((m_t > 0) & rows, new, p)


class BlockInputs(Probe):
    """VAR's probe of the layer inputs ``x``: the first token's ``|x| / rms(x)`` per layer, or the sink flags.

    Paper: 12 (VAR).
    Shapes: :meth:`result` maps layer -> ``[B, C]`` (``dims`` None: the first token) or
    ``[B, T]`` bool (``max_{d∈dims} |x_d| / rms(x) > tau``: the sink tokens).
    """

    observes_attention = False

    def __init__(self, dims: Tensor | None, tau: float):
        self.dims, self.tau, self.out = dims, tau, {}

    def result(self) -> dict:
        return self.out

    def observe_block(self, layer: int, x_in: Tensor, x_out: Tensor) -> None:
        x = x_in.float()  # [B, T, C]
        r = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).abs()  # [B, T, C]
        if self.dims is None:
            self.out[layer] = r[:, 0]  # [B, C]
        else:  # no sink dimensions: no sinks
            self.out[layer] = r[..., self.dims.to(r.device)].amax(-1) > self.tau if len(self.dims) else r[..., 0] < 0  # [B, T]


@register("sink_redistribute", paper="47, 12")
class SinkRedistribute(SiteEdit):
    """Take a fraction of the attention off sink keys and give it to the other keys of the row.

    Paper: 47 (ACT, hidden attention sinks) and 12 (VAR, visual attention sink).
    Shapes: acts on probability rows ``[B, H, Tc, Ts]``; sinks recorded as ``[B, H|1, Tk]``.

    Args:
        method: ``"act"`` (sink columns by attention mass, calibrated heads) or ``"var"`` (sink
            tokens by hidden-state dimensions, rows chosen by ρ and region mass).
        beta: ACT's scale of the sink mass [0.4]; 1 changes nothing.
        p: VAR's scale of the sink mass [0.6]; 1 changes nothing.
        tau: sink threshold: ACT ``α_j > τ`` [0.1], VAR ``|x_d| / rms(x) > τ`` [20].
        rho: VAR: largest sink share of the region for an edited row [0.5].
        region_mass: VAR: smallest region mass for an edited row [0.2].
        region: VAR: target-region key positions, e.g. a vision-language input's ``spans.image`` (None: every key).
        dims: VAR: sink dimensions ``D`` (None: found by calibration or on the first
            prepared input: the dims where the first token's ``|x_d| / rms(x) > τ`` at the inputs of
            at least half of the layers 1..L−1).
        sinks: fixed sink positions for every edited head (no detection, no unedited pass needed).
        layers: layers to act on (None: all).
        heads: ints (those heads in every layer), ``L{layer}H{head}`` strings or ``(layer, head)``
            pairs; None: every head; ``[]``: none.
        sites: site selection.

    Example:
        >>> e = SinkRedistribute(beta=0.5, sinks=[2])
        >>> p = torch.full((1, 1, 1, 4), 0.25)
        >>> e.at(Site("layers.0.attn", layer=0))(p, torch.arange(1), torch.arange(4))
        tensor([[[[0.2917, 0.2917, 0.1250, 0.2917]]]])
    """

    stage = "probs"
    caveat = "method=act without heads= chooses heads by perplexity, which needs a decoder: on an encoder give heads= or method=var"

    def __init__(
        self,
        method="act",
        beta=None,
        p=None,
        tau=None,
        rho=0.5,
        region_mass=0.2,
        region=None,
        dims=None,
        sinks=None,
        layers=None,
        heads=None,
        sites=None,
    ):
        super().__init__(layers=as_list(layers), sites=sites)
        if method not in _DEFAULTS:
            raise ValueError(f"sink_redistribute: method={method!r} is not one of 'act' (paper 47), 'var' (paper 12)")
        wrong = ("p", p) if method == "act" else ("beta", beta)
        if wrong[1] is not None:
            raise ValueError(
                f"sink_redistribute: {wrong[0]}= belongs to the other method; method={method!r} scales by {'beta' if method == 'act' else 'p'}="
            )
        scale = beta if method == "act" else p
        self.method = method
        name = "beta" if method == "act" else "p"
        scale = _DEFAULTS[method]["scale"] if scale is None else scale
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and not 0.0 <= scale <= 1.0:
            raise ValueError(f"sink_redistribute: the scale {name}= must be in [0, 1] (1 = no-op), got {name}={scale!r}")
        self.scale = number(scale, name, "sink_redistribute", low=0, high=1, hint=" (the scale of the sink mass: 1 = no-op)")
        self.tau = number(_DEFAULTS[method]["tau"] if tau is None else tau, "tau", "sink_redistribute", low=0)
        self.rho = number(rho, "rho", "sink_redistribute", low=0, high=1)
        self.region_mass = number(region_mass, "region_mass", "sink_redistribute", low=0, high=1)
        self._region_spec = region  # as given: a Span is checked against each input's length
        self.region = None if region is None else sorted(set(integers(region, "region", "sink_redistribute")))
        self.dims = None if dims is None else torch.tensor(integers(dims, "dims", "sink_redistribute"), dtype=torch.long)
        self.fixed = None if sinks is None else sorted(set(integers(sinks, "sinks", "sink_redistribute")))
        for name, xs in (("region", self.region), ("sinks", self.fixed), ("dims", None if dims is None else self.dims.tolist())):
            if xs and min(xs) < 0:
                raise ValueError(f"sink_redistribute: {name} are positions/indices >= 0, got {xs}")
        self.head_all, self.head_map = self._heads(heads)
        self.scores: dict[tuple[int, int], float] = {}  # ACT calibration: score change per head
        self._record: dict[str, Tensor] = {}
        self._cache: OrderedDict = OrderedDict()  # input -> sinks per site: a search's candidates share it
        self._sites: tuple[Site, ...] = ()  # the bound model's sites (validate)
        self._pending: tuple[str, tuple | None] | None = None  # what the probe of input_probe measures

    @staticmethod
    def _heads(heads) -> tuple[list[int] | None, dict[int, list[int]] | None]:
        items = as_list(heads)
        if items is None:
            return None, None
        if all(isinstance(h, int) for h in items):
            return sorted(set(items)), None
        if any(isinstance(h, int) for h in items):
            raise ValueError(f"sink_redistribute: heads are all ints or all L{{layer}}H{{head}}, got {items}")
        pairs: dict[int, list[int]] = {}
        for layer, h in parse_heads(items):
            pairs.setdefault(layer, []).append(h)
        return None, pairs

    @property
    def calibration(self) -> str | None:
        """ACT without ``heads=`` chooses them by a search (``"act_heads"``); VAR without ``dims=`` finds them (``"probe"``)."""
        if self.method == "act":
            return "act_heads" if self.head_all is None and self.head_map is None else None
        return "probe" if self.dims is None else None

    def heads_at(self, site: Site) -> list[int] | None:
        """Heads edited at ``site`` (None: all)."""
        if self.head_map is not None:
            return sorted(set(self.head_map.get(site.layer, [])))
        return self.head_all

    def at(self, site: Site) -> Callable | None:
        if self.scale == 1.0 or not self.acts_at(site) or self.heads_at(site) == []:
            return None  # a no-op attaches nothing: the model runs exactly as without the edit
        return self.function(site)

    def function(self, site: Site) -> Callable | None:
        heads = self.heads_at(site)
        if self.fixed is None and site.name not in self._record:
            raise ValueError(
                f"sink_redistribute: no sinks recorded for {site.name}: prepare the edit on the input before the edited pass "
                "(attnlab.runs.edit.prepare(model, [edit], input_ids)), or pass sinks=[positions]"
            )
        rec = None if self.fixed is None else torch.tensor(self.fixed)
        rec = self._record.get(site.name) if rec is None else rec
        scale, method = self.scale, self.method

        def cols(kv_idx: Tensor) -> Tensor:  # [B|1, H|1, 1, Ts] sink columns
            if self.fixed is not None:
                return torch.isin(kv_idx, rec.to(kv_idx.device)).view(1, 1, 1, -1)
            Tk = rec.shape[-1]
            s = rec.to(kv_idx.device)[..., kv_idx.clamp(max=Tk - 1)] & (kv_idx < Tk)  # keys after the prepared input: no sinks
            return s.unsqueeze(2)

        def edit(probs: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            B, H = probs.shape[:2]
            if rec.dim() == 3 and rec.shape[0] not in (1, B):
                raise ValueError(
                    f"sink_redistribute: sinks were prepared for batch {rec.shape[0]}, the pass has batch {B}: prepare the same input"
                )
            chosen = torch.zeros(H, dtype=torch.bool, device=probs.device)
            chosen[heads if heads is not None else slice(None)] = True
            rows = chosen.view(1, H, 1, 1)
            sink = cols(kv_idx)
            if method == "act":
                return redistribute(probs, sink, ~sink, scale, rows)
            region = kv_idx >= 0 if self.region is None else torch.isin(kv_idx, torch.tensor(self.region, device=kv_idx.device))
            region = region.view(1, 1, 1, -1)  # [1, 1, 1, Ts]
            m_r = torch.where(region, probs, 0.0).sum(-1, keepdim=True)  # [B, H, Tc, 1]
            share = torch.where(region & sink, probs, 0.0).sum(-1, keepdim=True) / m_r.clamp_min(torch.finfo(probs.dtype).tiny)
            rows = rows & (share <= self.rho) & (m_r >= self.region_mass)
            return redistribute(probs, sink, region & ~sink, scale, rows)

        return edit

    # --- finding the sinks: an unedited pass over the input, run by a run --------------------------

    def input_probe(self, input_ids: Tensor) -> Probe | None:
        """The probe of an unedited pass over ``input_ids``: VAR's sink dimensions first (if unknown), then the sinks.

        None when the sinks of this input are known (cached), fixed (``sinks=``) or unused (scale 1).
        A region given as a :class:`~attnlab.core.spans.Span` of an input of another length is refused.
        """
        check_span(self._region_spec, int(input_ids.shape[-1]), "sink_redistribute region")
        if self.fixed is not None or self.scale == 1.0:
            return None
        if self.method == "var" and self.dims is None:
            self._pending = ("dims", None)
            return BlockInputs(None, self.tau)
        key = (self.method, self.tau, tuple(input_ids.shape), hash(input_ids.cpu().numpy().tobytes()))
        if key in self._cache:
            self._record, self._pending = self._cache[key], None
            return None
        self._pending = ("sinks", key)
        return ColumnMass() if self.method == "act" else BlockInputs(self.dims, self.tau)

    def prepared(self, probe: Probe) -> None:
        """Record what the probe of :meth:`input_probe` found: VAR's dimensions, or the sinks per site and head."""
        what, key = self._pending
        self._pending = None
        if what == "dims":
            self.dims = self._dims(probe)
            return
        self._cache[key] = self._sinks(probe.result())
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        self._record = self._cache[key]

    def _dims(self, probe: BlockInputs) -> Tensor:
        """VAR's sink dimensions: where the first token's ``|x_d| / rms(x) > τ`` at the inputs of at least half of layers 1..L−1."""
        firsts = probe.result()  # layer -> [B, C]
        votes = torch.stack([r > self.tau for layer, r in sorted(firsts.items()) if layer >= 1]).float().mean(0)  # [B, C]
        return torch.nonzero((votes >= 0.5).any(0)).flatten().cpu()

    def _sinks(self, found: dict) -> dict[str, Tensor]:
        if self.method == "act":
            out = {}
            for name, r in found.items():
                s = r["mass"] / r["queries"].clamp(min=1) > self.tau  # [B, H, Tk]: α_j > τ
                s[..., 0] = False  # ACT: hidden sinks are columns j >= 1
                out[name] = s
            return out
        if not self._sites:
            raise ValueError("sink_redistribute: VAR names its sinks by site: bind the edit to the model first (attnlab.runs.edit.bind)")
        return {s.name: found[s.layer].unsqueeze(1) for s in self._sites if s.layer in found}  # layer -> [B, 1, Tk] per site

    # --- calibration: VAR's dimensions by a probe, ACT's heads by a search ---------------------------

    def calibration_inputs(self, tokenizer, *, text: str = "lucrece", windows: int | None = None, window: int = 256) -> list[Tensor]:
        """Perplexity windows ``[1, window + 1]`` of ``text`` (a shipped text's name or raw text): ACT scores ``windows`` [2], VAR reads the first."""
        if self.method == "var":
            return text_windows(tokenizer, text, 1, window, extra=1)
        return text_windows(tokenizer, text, 2 if windows is None else windows, window, extra=1)

    def calibration_probe(self) -> Probe | None:
        """VAR: the first token's layer inputs (the sink dimensions); ACT calibrates by a search instead."""
        return BlockInputs(None, self.tau) if self.method == "var" else None

    def calibrated(self, result) -> None:
        """VAR: the :class:`BlockInputs` probe, whose first tokens give ``dims``. ACT: the search's choice,
        ``{"heads": {layer: [head, ...]}, "scores": {(layer, head): s_lh − s0}}``: the kept heads replace ``heads``."""
        if self.method == "var":
            self.dims = self._dims(result)
            return
        self.head_all, self.head_map, self.scores = None, result["heads"], result["scores"]

    def only(self, heads) -> SinkRedistribute:
        """ACT on ``heads`` alone (``(layer, head)`` pairs), sharing the sinks found so far: a search's candidate."""
        one = SinkRedistribute("act", beta=self.scale, tau=self.tau, heads=list(heads), sites=self._match)
        one._cache, one._sites = self._cache, self._sites  # the sinks of an input are found once for every head
        return one

    def validate(self, sites: Sequence[Site]) -> None:
        """Check layers and heads; keep the sites (VAR names its sinks by site). A new model forgets the sinks found."""
        if tuple(sites) != self._sites:
            self._sites, self._record = tuple(sites), {}
            self._cache.clear()
        n_layers, n_heads = len(sites), sites[0].num_heads if sites else None
        pairs = [(la, h) for la, hs in (self.head_map or {}).items() for h in hs] + [(None, h) for h in self.head_all or []]
        for layer in [*(self.layers or []), *(la for la, _ in pairs if la is not None)]:
            if not 0 <= layer < n_layers:
                raise ValueError(f"sink_redistribute: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        for layer, h in pairs:
            if n_heads is not None and not 0 <= h < n_heads:
                raise ValueError(f"sink_redistribute: head {h} (layer {layer}) is out of range: the model has heads 0..{n_heads - 1}")
        check_selects_a_site(self, sites, self.layers)

    def __repr__(self) -> str:
        heads = self.head_map if self.head_map is not None else self.head_all
        return f"SinkRedistribute(method={self.method!r}, scale={self.scale}, tau={self.tau}, layers={self.layers}, heads={heads})"
