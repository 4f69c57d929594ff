"""Hook points: the named activations of a model, read or replaced by callers and told to probes.

Every supported model (Hugging Face models instrumented by :func:`attnlab.models.hf.instrument`,
:class:`attnlab.models.tiny.TinyTransformer`) passes its activations through :func:`emit` under
one set of addresses (docs: "Hook points"):

    embed -> layers.{i}.resid_pre -> attn.q / attn.k / attn.v -> attn.probs -> attn.z -> attn.out
          -> layers.{i}.resid_mid -> mlp.out -> layers.{i}.resid_post -> ... -> final_norm -> logits

A :class:`Tap` says what to do at a set of points (keep a copy, replace the tensor); taps are
active inside :func:`tapping` blocks, per thread and per async task (``contextvars``), like
:func:`attnlab.core.attach`. With no tap active, :func:`emit` returns its input at the cost of
one context-variable read: nothing is stored unless a caller asks.

The block helpers (:func:`block_in`, :func:`sublayer`, :func:`block_out`) are what model adapters
call around a transformer block: they emit the residual-stream points and tell attached probes
the block events of :class:`attnlab.core.Probe` (``observe_sublayer``, ``observe_block``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from attnlab.core.context import attached
from attnlab.core.site import AttentionChunk, Probe, Site

__all__ = [
    "Tap",
    "active",
    "block_in",
    "block_out",
    "emit",
    "keeps_input",
    "pre_norm_mid",
    "probs_taps",
    "sublayer",
    "tapping",
    "wants",
    "z",
]

_TAPS: ContextVar[tuple[Tap, ...]] = ContextVar("attnlab_taps", default=())


class Tap:
    """What to do with the activations at a set of points.

    Args:
        points: the exact point names this tap acts at.
        fn: ``fn(x, point) -> Tensor``; returning ``x`` itself leaves the activation untouched.
        reads: the tap only reads (a capture): at ``attn.probs`` it gets the whole
            ``[B, H, Tq, Tk]`` matrix, assembled from the streamed chunks.
        rows: for a tap that writes ``attn.probs``: ``rows(probs, point, q_idx, kv_idx, shape) -> probs``
            on each chunk of whole rows ``[B, H, Tc, Ts]`` (query positions ``q_idx``, keys
            ``kv_idx``) of the ``shape = [B, H, Tq, Tk]`` matrix.
    """

    def __init__(self, points: Sequence[str], fn: Callable[[Tensor, str], Tensor], *, reads: bool = False, rows: Callable | None = None):
        self.points = frozenset(points)
        self.fn, self.reads, self.rows = fn, reads, rows


@contextmanager
def tapping(*taps: Tap) -> Iterator[None]:
    """Make ``taps`` active inside the block (after those of enclosing blocks)."""
    token = _TAPS.set(_TAPS.get() + taps)
    try:
        yield
    finally:
        _TAPS.reset(token)


def active() -> bool:
    """Whether any tap is active."""
    return bool(_TAPS.get())


def wants(point: str) -> bool:
    """Whether an active tap acts at ``point``."""
    return any(point in t.points for t in _TAPS.get())


def emit(point: str, x: Tensor) -> Tensor:
    """The activation at ``point`` after every active tap there (``x`` itself when none acts)."""
    for t in _TAPS.get():
        if point in t.points:
            x = t.fn(x, point)
    return x


def z(site: Site, out: Tensor) -> Tensor:
    """Emit ``{site}.z``, the per-head outputs ``[B, T, H, D]``, from attention output ``out [B, H, T, D]``."""
    point = f"{site.name}.z"
    if not wants(point):
        return out
    heads_last = out.transpose(1, 2)  # [B, T, H, D]
    new = emit(point, heads_last)
    return out if new is heads_last else new.transpose(1, 2)  # [B, H, T, D]


# --- attention probabilities: streamed, materialised only when captured -----------------------


class _Assemble(Probe):
    """Collects the probability chunks of one site into ``[B, H, Tq, Tk]``, then gives them to a tap."""

    def __init__(self, point: str, tap: Tap, shape: tuple[int, int, int, int]):
        self.point, self.tap, self.shape = point, tap, shape
        self.probs: Tensor | None = None

    def observe(self, chunk: AttentionChunk, site: Site) -> None:
        p = chunk.probs  # [B, H, Tc, Ts]
        if self.probs is None:
            self.probs = p.new_zeros(self.shape)  # [B, H, Tq, Tk]
        self.probs[:, :, chunk.q_idx, chunk.kv_start : chunk.kv_start + p.shape[-1]] = p

    def done(self) -> None:
        """The row pass is over: hand the whole matrix to the tap."""
        self.tap.fn(self.probs if self.probs is not None else torch.zeros(self.shape), self.point)


def probs_taps(site: Site, shape: tuple[int, int, int, int]) -> tuple[list[_Assemble], list[Callable]]:
    """For ``{site}.probs``: probes that assemble the matrix for reading taps, probability edits for writing ones.

    ``shape`` is the matrix's ``[B, H, Tq, Tk]``. Writing taps act first (they are edits), then
    the readers see the result.
    """
    point = f"{site.name}.probs"
    readers, edits = [], []
    for t in _TAPS.get():
        if point not in t.points:
            continue
        if t.reads:
            readers.append(_Assemble(point, t, shape))
        elif t.rows is not None:
            edits.append(lambda probs, q_idx, kv_idx, rows=t.rows: rows(probs, point, q_idx, kv_idx, shape))
    return readers, edits


# --- the residual stream around a block --------------------------------------------------------


def _observers() -> tuple[Probe, ...]:
    return attached()[0]


def block_in(layer: int, x: Tensor) -> Tensor:
    """Emit ``embed`` (before layer 0) and ``layers.{layer}.resid_pre``; the block's input ``[B, T, C]``."""
    if not _TAPS.get():
        return x
    if layer == 0:
        x = emit("embed", x)
    return emit(f"layers.{layer}.resid_pre", x)


def sublayer(layer: int, x_in: Tensor | None, a: Tensor) -> Tensor:
    """The attention sublayer's contribution ``a [B, T, C]`` after attached edits, taps and probes.

    Applies the attached edits' :meth:`~attnlab.core.Edit.sublayer` functions in order, emits
    ``layers.{layer}.attn.out``, then tells probes. ``x_in`` is the block's input (None when no
    probe is attached and no tap is active: the adapter then keeps nothing).
    """
    for e in attached()[1]:
        fn = e.sublayer(layer)
        if fn is not None:
            a = fn(a)
    if _TAPS.get():
        a = emit(f"layers.{layer}.attn.out", a)
    if x_in is not None:
        for p in _observers():
            p.observe_sublayer(layer, x_in.detach(), a.detach())
    return a


def pre_norm_mid(layer: int, x_in: Tensor | None, a: Tensor) -> Tensor:
    """``layers.{layer}.resid_mid`` of a pre-norm block whose model keeps ``x_in + a`` to itself.

    Emits ``x_in + a`` (the sum the block computes) and returns the attention contribution that
    makes the block's middle residual equal what the taps returned: ``a`` itself when they left
    it unchanged, else ``new − x_in`` (exact up to float rounding).
    """
    point = f"layers.{layer}.resid_mid"
    if x_in is None or not wants(point):
        return a
    mid = x_in + a  # [B, T, C]
    new = emit(point, mid)
    return a if new is mid or torch.equal(new, mid) else new - x_in


def block_out(layer: int, x_in: Tensor | None, x: Tensor) -> Tensor:
    """Emit ``layers.{layer}.resid_post``, the block's output ``x [B, T, C]``; tell probes."""
    if _TAPS.get():
        x = emit(f"layers.{layer}.resid_post", x)
    if x_in is not None:
        for p in _observers():
            p.observe_block(layer, x_in.detach(), x.detach())
    return x


def keeps_input() -> bool:
    """Whether a block adapter must keep the block's input: a probe is attached or a tap is active."""
    return bool(_TAPS.get()) or bool(_observers())
