"""The attention site and the two roles played there besides computing: probes and edits.

A :class:`Site` names one attention call (``layers.3.attn``). Every attention computation, in a
Hugging Face model or in attnlab's own modules, goes through :func:`attnlab.core.attend` with a
site, so a probe or an edit written once works everywhere.

- A **probe** observes: it receives normalised attention probabilities one chunk of query rows
  at a time (:class:`AttentionChunk`), accumulates what it needs, and never sees the whole
  matrix. Probes are nouns (``probes.Entropy()``).
- An **edit** acts: a pure function bound to a site, applied at one of three stages:
  ``"logits"`` (before the softmax, like FlexAttention's ``score_mod``), ``"probs"`` (after the
  softmax, on chunks of whole rows) or ``"output"`` (per-head outputs before the output
  projection). Edits of one stage compose in the order given; the stages run in that order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["AttentionChunk", "Edit", "Probe", "Site", "Support", "site_matcher"]

Stage = Literal["logits", "probs", "output"]


@dataclass(frozen=True)
class Site:
    """One attention call in a model.

    Attributes:
        name: the site's address, ``layers.{i}.attn`` in HF and tiny models alike.
        layer: layer index, if the site belongs to a layer stack.
        module_path: the module's path in its model (``model.layers.3.self_attn``).
        num_heads: query heads.
        num_kv_heads: key/value heads (fewer than ``num_heads`` under GQA).
        grid: ``(h, w)`` when the queries are the pixels of an image, row by row (a diffusion
            model's attention, :mod:`attnlab.models.diffusers`): region masks are resized to it.
    """

    name: str = "attend"
    layer: int | None = None
    module_path: str | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    grid: tuple[int, int] | None = None


@dataclass
class AttentionChunk:
    """Attention weights of a chunk of query rows, as a probe receives them.

    Attributes:
        probs: ``[B, H, Tc, Ts]`` float32; row ``i`` holds query ``q_idx[i]``'s weights over keys
            ``kv_start .. kv_start + Ts - 1``. Keys outside that span have weight 0. Softmax rows
            sum to 1, or to 0 for a query with no visible key; ReLU attention's rows
            (``normalizer == "relu"``, paper 68: ``ReLU(s) / n_visible``) sum to anything ``>= 0``,
            0 for a dormant query.
        visible: ``[B|1, H|1, Tc, Ts]`` bool, the keys the mask lets each query see.
        q_idx: ``[Tc]`` query positions.
        kv_start: position of the first key in ``probs``.
        lk: number of keys in the whole sequence.
        logits: ``[B, H, Tc, Ts]`` the logits the probabilities came from, finite (hidden keys
            hold the dtype's minimum), when the row pass can give them; None otherwise.
        normalizer: how the weights came from the logits: ``"softmax"`` or ``"relu"``.

    Statistics several probes need (:attr:`row_entropy`, :attr:`column_sum`) are computed once
    per chunk and shared.
    """

    probs: Tensor
    visible: Tensor
    q_idx: Tensor
    kv_start: int
    lk: int
    logits: Tensor | None = None
    normalizer: str = "softmax"

    @cached_property
    def num_visible(self) -> Tensor:
        """``[B|1, H|1, Tc]`` number of keys each query may attend to."""
        return self.visible.sum(-1)

    @cached_property
    def row_entropy(self) -> Tensor:
        """``[B, H, Tc]`` entropy of each row in nats (0 for a row with nothing visible).

        With logits: ``H = lse − Σ p·s``, with no logarithm per element. ``lse = s_j − log p_j``
        holds for any key ``j``: the first key of the span when every row sees it with
        ``p > 1e-30`` (a causal chunk's first key: no pass over the rows needed), else the
        row's largest ``p`` (``max s − log max p``). Otherwise ``−Σ p log p``. ReLU attention's
        rows are first normalised to sum to 1 (a row of zeros has entropy 0).
        """
        p = self.probs
        if p.shape[-1] == 0:  # a chunk of rows that see nothing
            return p.new_zeros(p.shape[:-1])
        if self.normalizer != "softmax":
            p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)  # [B, H, Tc, Ts] rows sum to 1 (or 0)
            return -torch.xlogy(p, p).sum(-1)
        if self.logits is None:
            return -torch.xlogy(p, p).sum(-1)
        ps = torch.einsum("bhqk,bhqk->bhq", p, self.logits)  # [B, H, Tc] Σ p·s; faster than vecdot on CPU
        p0 = p[..., 0].double()
        if bool(self.visible[..., 0].all()) and bool((p0 > 1e-30).all()):
            lse = self.logits[..., 0].double() - torch.log(p0)  # float64: lse may be large, log p_0 is exact enough
            return (lse - ps).clamp_min(0.0).to(p.dtype)
        p_max = p.amax(-1)
        lse = self.logits.amax(-1) - torch.log(p_max.clamp_min(1e-38))
        return torch.where(p_max > 0, (lse - ps).clamp_min(0.0), 0.0)

    @cached_property
    def column_sum(self) -> Tensor:
        """``[B, H, Ts]`` attention each key receives from the chunk's queries."""
        return self.probs.sum(2)


KINDS = ("decoder", "encoder")  # model kinds: a causal LM (next-token logits), an encoder (hidden states only)


class Support:
    """Where a probe or an edit applies, declared on its class (one-line overrides).

    Runs read :attr:`kinds` to skip what does not apply to a model by default (a line says why)
    and to refuse it when it is asked for by name; ``docs/support.py`` renders every declaration
    as the support matrix (docs/support.md).

    Attributes:
        kinds: the model kinds it applies to: ``"decoder"`` (a causal LM), ``"encoder"``.
        needs: why it applies only to :attr:`kinds` (``"decodes answers from next-token logits"``),
            for the line that says it was skipped; empty when it applies to every kind.
        with_sliding_window: right on models whose layers attend through a sliding window
            (Mistral, Gemma 2 and 3): the site's mask hides keys outside the window.
        with_softcap: right on models that soft-cap attention logits (Gemma 2:
            ``c · tanh(s / c)``, a logit-stage function the model adapter runs *before* the
            logit-stage edits attached to the site).
        caveat: what limits it where it applies, in one sentence (empty: nothing).
    """

    kinds: frozenset[str] = frozenset(KINDS)
    needs: str = ""
    with_sliding_window: bool = True
    with_softcap: bool = True
    caveat: str = ""


class Probe(Support):
    """An observer in a model's hook graph: every event it can receive is a method here, a no-op by default.

    Subclass it and override the events you need; the model adapters (Hugging Face models
    instrumented by :func:`attnlab.models.hf.instrument`, :class:`attnlab.models.tiny.TinyTransformer`)
    and :func:`attnlab.attend` call them on every attached probe:

    - :meth:`observe`: a chunk of query rows of attention probabilities at a site (only when
      ``observes_attention`` is True: attaching such a probe switches attention to the row pass);
    - :meth:`observe_values`: the value states at a site, ``[B, Hkv, Tk, Dv]``;
    - :meth:`observe_sublayer`: a block's input and its attention sublayer's contribution to the
      residual stream, both ``[B, T, C]``;
    - :meth:`observe_block`: a block's input and output ``[B, T, C]``;
    - :meth:`begin` / :meth:`end`: around each input of a run (a scan calls them).

    :meth:`result` returns what was accumulated, keyed by site name (or layer). Where a probe
    applies (model kinds, sliding windows, softcapping) it declares as a :class:`Support`.
    """

    observes_attention: bool = True

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        """A chunk of attention rows at ``site`` (normalised probabilities, whole rows)."""

    def observe_values(self, v: Tensor, site: Site) -> None:
        """Value states ``[B, Hkv, Tk, Dv]`` at ``site``."""

    def observe_sublayer(self, layer: int, x_in: Tensor, attn_out: Tensor) -> None:
        """Block ``layer``'s input and its attention sublayer's contribution to the residual stream, ``[B, T, C]``."""

    def observe_block(self, layer: int, x_in: Tensor, x_out: Tensor) -> None:
        """Block ``layer``'s input and output ``[B, T, C]``."""

    def begin(self, input_ids: Tensor, tokens: list[str]) -> None:
        """Before an input of a run: its ids ``[B, T]`` and the token strings of the first sequence."""

    def end(self) -> None:
        """After an input of a run."""

    def result(self) -> dict[str, Any]:
        """What was accumulated, keyed by site name."""
        return {}


class Edit(Support):
    """A training-free change of attention at a site; subclass it and override what the edit does.

    ``stage`` says where it acts; :meth:`at` returns the function to apply at a site, or None
    if the edit does not touch it. The function's signature depends on the stage:

    - ``"logits"``: ``fn(score, b, h, q_idx, kv_idx) -> score``, elementwise over broadcasting
      index tensors (FlexAttention's ``score_mod``);
    - ``"probs"``: ``fn(probs, q_idx, kv_idx) -> probs`` with ``probs`` ``[B, H, Tc, Ts]`` whole
      rows, ``q_idx`` ``[Tc]`` and ``kv_idx`` ``[Ts]`` positions;
    - ``"output"``: ``fn(out) -> out`` with ``out`` ``[B, H, Tq, D]`` per-head outputs.

    An edit never runs a model. What it needs to see first, it declares; runs
    (:mod:`attnlab.runs`) measure it with unedited passes and hand it back. The events, each a
    no-op by default, in the order a run calls them:

    - :meth:`validate`: the model's sites, before anything runs (check them, keep what is needed);
    - :attr:`calibration`: whether and how the edit is calibrated once, before it acts: None, or
      ``"probe"`` (the run attaches :meth:`calibration_probe` to unedited passes over
      :meth:`calibration_inputs`, then calls :meth:`calibrated` with it), or the name of a search
      in :data:`attnlab.runs.calibrate.SEARCHES` (which scores candidate edits and calls
      :meth:`calibrated` with its choice);
    - :meth:`input_probe` / :meth:`prepared`: before each edited pass, a probe for an unedited pass
      over the same input, and that probe back once it has run (asked again until None);
    - :meth:`sublayer`: a function for the attention sublayer's contribution to the residual
      stream, which model adapters apply while the edit is attached;
    - :meth:`close`: the run is over (release caches).

    Where an edit applies (model kinds, sliding windows, softcapping) it declares as a :class:`Support`.
    """

    stage: Stage  # set by every subclass
    calibration: str | None = None  # None | "probe" | a search name; subclasses may make it a property

    def at(self, site: Site) -> Callable | None:
        """The function to apply at ``site`` (None: the edit does not act there)."""
        return None

    def validate(self, sites: Sequence[Site]) -> None:
        """The model's sites, in layer order: raise ``ValueError`` for layers or heads they do not have.

        Runs call it before anything else, and again when they bind the edit to a model; an edit
        may keep what it needs of the sites (the layer count, the site names).
        """

    def calibration_inputs(self, tokenizer, **options) -> list[Tensor]:
        """The ``[1, T]`` token ids of the unedited calibration passes (``options``: the edit's own, e.g. ``windows``)."""
        return []

    def calibration_probe(self) -> Probe | Edit | None:
        """An observer for the calibration passes: a :class:`Probe`, or an edit that records and changes nothing."""
        return None

    def calibrated(self, result: Any) -> None:
        """What calibration measured: the observer of :meth:`calibration_probe` after the passes, or a search's choice."""

    def input_probe(self, input_ids: Tensor) -> Probe | None:
        """Before an edited pass over ``input_ids`` ``[B, T]``: a probe for an unedited pass over them (None: nothing to see).

        Edits that only need the ids (their length) read them here and return None.
        """
        return None

    def prepared(self, probe: Probe) -> None:
        """The probe of :meth:`input_probe` after the unedited pass over the input."""

    def sublayer(self, layer: int) -> Callable[[Tensor], Tensor] | None:
        """The function to apply to block ``layer``'s attention-sublayer contribution ``[B, T, C]`` (None: none).

        That is the residual-stream point ``layers.{layer}.attn.out``: zeroing it drops the sublayer
        whole, output-projection bias included.
        """
        return None

    def close(self) -> None:
        """The run that used the edit is over."""


def site_matcher(spec: str | Iterable[str] | Callable[[Site], bool] | None) -> Callable[[Site], bool]:
    """Turn a site selection into a predicate.

    ``spec`` is None (every site), a name or glob (``"layers.1*.attn"``), a list of those, or a
    predicate on :class:`Site`.
    """
    if spec is None:
        return lambda site: True
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else list(spec)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"a site selection is a name, a glob, a list of them or a predicate, got {p!r}")
    return lambda site: any(fnmatch.fnmatchcase(site.name, p) for p in patterns)
