"""``attend``: the single attention entry point, where backends compute, edits act and probes observe."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from attnlab.core import backends as _backends
from attnlab.core import hooks
from attnlab.core import masks as M
from attnlab.core.backends.base import Backend, Inputs
from attnlab.core.context import attached
from attnlab.core.rows import row_pass
from attnlab.core.site import Edit, Probe, Site

__all__ = ["attend", "choose_backend"]

_STAGES = ("logits", "probs", "output")
_DEFAULT_SITE = Site()


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: M.Mask | Tensor | None = None,
    bias: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    backend: str | Backend = "auto",
    site: Site | None = None,
    probes: Sequence[Probe] = (),
    edits: Sequence[Edit] = (),
    q_offset: int = 0,
    normalizer: str = "softmax",
) -> Tensor:
    """Attention at a site: ``softmax(q kᵀ · scale + bias, masked) v``, or ReLU attention.

    Args:
        q: queries ``[B, H, Tq, D]``.
        k: keys ``[B, Hkv, Tk, D]``; ``H`` must be a multiple of ``Hkv`` (GQA/MQA).
        v: values ``[B, Hkv, Tk, Dv]``.
        mask: a predicate from :mod:`attnlab.core.masks`, a boolean tensor (True = may attend) or
            an additive float tensor, broadcastable to ``[B, H, Tq, Tk]``.
        bias: an additive float tensor broadcastable to ``[B, H, Tq, Tk]``, applied together
            with a boolean or predicate ``mask`` (e.g. relative position logits).
        is_causal: also apply :data:`attnlab.core.masks.causal` (``q_idx >= kv_idx``).
        scale: multiplies ``q kᵀ``; default ``1 / sqrt(D)``.
        backend: ``"reference"``, ``"sdpa"``, ``"flex"``, ``"blocked"``, a backend object such
            as ``Blocked(q_tile=64)``, or ``"auto"`` (see :func:`choose_backend`).
        site: where this call happens; probes key their results by ``site.name`` and edits
            decide by it whether they act.
        probes: observers that receive the probabilities chunk by chunk of query rows.
        edits: interventions; logit edits run first, then probability edits, then output edits.
            Edits attached with :func:`attnlab.core.attach` join these, after them within a
            stage: the call's own edits are part of the model (Gemma 2's logit softcap), and
            attached edits act on what the model computes.
        q_offset: absolute position of the first query, for edits: with a KV cache the queries
            are the last ``Tq`` of ``Tk`` positions (``q_offset = Tk - Tq``). Logit and
            probability edits see ``q_idx + q_offset``; masks keep positions within the call.
        normalizer: how logits ``s`` become weights: ``"softmax"``, or ``"relu"`` for paper 68's
            ReLU attention ``ReLU(s) / n``, ``n`` the number of keys the query may see (its
            1-based position under a causal mask). ReLU weights need not sum to 1, so a head
            can output 0 without a sink. Only ``reference`` (and the row pass) compute it:
            ``auto`` picks it, and forcing another backend raises.

    Returns:
        ``[B, H, Tq, Dv]`` in the dtype of ``q``. A query with no visible key gets zeros.

    With probes or probability edits the output is computed by the row pass
    (:mod:`attnlab.core.rows`) instead of a backend: rows are needed whole, normalised, there.

    Shapes:
        B batch, H query heads, Hkv key/value heads, Tq/Tk lengths, D head dim.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> attend(q, k, v, is_causal=True).shape
        torch.Size([1, 2, 5, 8])
    """
    site = site or _DEFAULT_SITE
    tapped = hooks.active()
    if tapped:  # hook points layers.{i}.attn.q / .k / .v: [B, H|Hkv, T, D]
        q, k, v = (hooks.emit(f"{site.name}.{name}", t) for name, t in (("q", q), ("k", k), ("v", v)))
    x = _check(q, k, v, mask, bias, is_causal, scale, normalizer)
    if backend != "auto" and x.normalizer not in _backends.get(backend).normalizers:
        raise ValueError(f"backend={backend!r} computes softmax only, not normalizer={normalizer!r}: use 'reference' or 'auto'")
    ctx_probes, ctx_edits = attached()
    probes, edits = (*ctx_probes, *probes), (*edits, *ctx_edits)  # the call's own edits (a model's softcap) before attached ones
    bound = _bind(edits, site)
    if isinstance(q_offset, bool) or not isinstance(q_offset, numbers.Integral):
        raise TypeError(f"q_offset must be an integer (the position of the first query), got q_offset={q_offset!r}")
    if q_offset:
        q_offset = int(q_offset)
        bound["logits"] = [_shift_logits(fn, q_offset) for fn in bound["logits"]]
        bound["probs"] = [_shift_probs(fn, q_offset) for fn in bound["probs"]]
    x.score_mod = _compose_logits(bound["logits"])
    readers = []
    if tapped:  # layers.{i}.attn.probs: written by probability edits, read whole by assembling probes
        readers, writes = hooks.probs_taps(site, (*x.q.shape[:3], x.k.shape[2]))
        bound["probs"] += writes
    for p in probes:
        if not isinstance(p, Probe):
            raise TypeError(f"a probe must subclass attnlab.core.Probe (observe(chunk, site), result()), got {type(p).__name__}")
        p.observe_values(v.detach(), site)  # [B, Hkv, Tk, Dv]
    probes = [p for p in probes if p.observes_attention] + readers
    if probes or bound["probs"]:
        out = row_pass(x, probs_edits=bound["probs"], probes=probes, site=site)
        for r in readers:
            r.done()
    elif 0 in (x.q.shape[2], x.k.shape[2], x.v.shape[-1]):  # no query, no key (rows see nothing) or no value dim
        out = x.q.new_zeros(*x.q.shape[:3], x.v.shape[-1])
    else:
        chosen = choose_backend(x) if backend == "auto" else _backends.get(backend)
        if x.score_mod is not None and chosen.name == "sdpa":
            raise ValueError("backend='sdpa' cannot apply logit edits: use 'blocked', 'reference' or 'auto'")
        # Fused kernels lose or spread NaN (PyTorch's CPU kernels give 0 on a row whose logits
        # are all NaN; 0 · NaN carries a value's NaN to rows that cannot see it), and compiled
        # FlexAttention gets head_dim 0 wrong: with a NaN in the inputs or no head dim, the row
        # pass computes the call, by the rules the reference follows.
        exact = chosen.name != "reference" and (x.q.shape[-1] == 0 or _holds_nan(x))
        out = row_pass(x, probs_edits=(), probes=(), site=site) if exact else chosen(x)
    for fn in bound["output"]:
        out = fn(out)
    return hooks.z(site, out) if tapped else out


def choose_backend(x: Inputs) -> Backend:
    """The ``auto`` rule: the fastest backend that is correct for these inputs.

    0. A normalizer other than softmax (ReLU attention): ``reference``, the backend that has it.
    1. Logit edits: ``reference`` if gradients are needed (the others cannot differentiate
       through an edit), else ``blocked``.
    2. A predicate mask whose tile plan computes at most half of the tiles (sliding windows,
       neighborhoods, halos, strided groups, documents at long length): ``blocked``.
    3. Everything else (no mask, causal, dense masks and biases, short inputs): ``sdpa``.
    """
    if x.normalizer != "softmax":
        return _backends.BACKENDS["reference"]
    if x.score_mod is not None:
        return _backends.BACKENDS["reference" if x.needs_grad else "blocked"]
    Tq, Tk = x.q.shape[2], x.k.shape[2]
    if x.mask is not None and x.dense_mask is None and x.mask is not M.causal and Tq * Tk >= 256 * 256:
        blocked = _backends.BACKENDS["blocked"]
        if blocked.plan(x).density() <= 0.5:
            return blocked
    return _backends.BACKENDS["sdpa"]


def _holds_nan(x: Inputs) -> bool:
    """Whether q, k, v or the bias hold a NaN: one float32 sum each, as a NaN survives any sum.

    A sum that overflows to ``inf - inf`` reads as NaN too; that costs the exact path only.
    """
    total = x.q.sum(dtype=torch.float32).add_(x.k.sum(dtype=torch.float32)).add_(x.v.sum(dtype=torch.float32))
    if x.bias is not None:
        total.add_(x.bias.sum(dtype=torch.float32))
    return bool(total.isnan())


def _bind(edits: Sequence[Edit], site: Site) -> dict[str, list]:
    bound: dict[str, list] = {s: [] for s in _STAGES}
    for e in edits:
        if not isinstance(e, Edit) or e.stage not in _STAGES:
            raise TypeError(f"an edit needs .stage in {_STAGES} and .at(site): subclass attnlab.core.Edit, got {e!r}")
        fn = e.at(site)
        if fn is not None:
            bound[e.stage].append(fn)
    return bound


def _shift_logits(fn, offset: int):
    return lambda score, b, h, q_idx, kv_idx: fn(score, b, h, q_idx + offset, kv_idx)


def _shift_probs(fn, offset: int):
    return lambda probs, q_idx, kv_idx: fn(probs, q_idx + offset, kv_idx)


def _compose_logits(fns: list):
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def score_mod(score, b, h, q_idx, kv_idx):
        for fn in fns:
            score = fn(score, b, h, q_idx, kv_idx)
        return score

    return score_mod


NORMALIZERS = ("softmax", "relu")


def _check(q, k, v, mask, bias, is_causal, scale, normalizer="softmax") -> Inputs:
    """Validate shapes, dtypes and masks; normalise them into :class:`Inputs`."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got normalizer={normalizer!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, length, head_dim], got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got dtype={t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}: cast them with .to()")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q={q.device}, k={k.device}, v={v.device}")
    B, H, Tq, D = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree in batch, heads and length, got k={tuple(k.shape)}, v={tuple(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"q has batch {B} but k has batch {k.shape[0]}: they must match")
    if k.shape[3] != D:
        raise ValueError(f"q has head_dim {D} but k has head_dim {k.shape[3]}: q and k must share head_dim")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"k has {Hkv} heads, q has {H}: q heads must be a multiple of k heads")
    Tk = k.shape[2]
    scale = _real(scale, "scale") if scale is not None else (1.0 / math.sqrt(D) if D else 1.0)
    x = Inputs(q, k, v, scale, normalizer=normalizer)
    if isinstance(mask, M.Mask):
        mask.check_lengths(Tq, Tk)
        x.mask = mask
    elif isinstance(mask, Tensor):
        t = _as_4d(mask, "mask", B, H, Tq, Tk, q.device)
        if t.dtype == torch.bool:
            x.dense_mask = t
        elif t.dtype.is_floating_point:
            x.bias = t
        else:
            raise TypeError(f"a tensor mask must be bool (True = may attend) or an additive float bias, got dtype={t.dtype}")
    elif mask is not None:
        raise TypeError(f"mask must be a masks.Mask, a bool tensor or a float tensor, got {type(mask).__name__}")
    if bias is not None:
        if not isinstance(bias, Tensor) or not bias.dtype.is_floating_point:
            raise TypeError(f"bias must be a float tensor, got {type(bias).__name__ if not isinstance(bias, Tensor) else bias.dtype}")
        if x.bias is not None:
            raise ValueError("a float mask is a bias already: pass the bias once, as mask= or bias=")
        x.bias = _as_4d(bias, "bias", B, H, Tq, Tk, q.device)
    if is_causal:
        if x.dense_mask is not None:
            x.dense_mask = x.dense_mask & M.causal.dense(Tq, Tk, device=q.device)
        else:
            x.mask = M.causal if x.mask is None else x.mask & M.causal
    return x


def _real(value, name: str) -> float:
    """A finite real number (Python, numpy or a 0-d float tensor) as a float; bool is refused."""
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float or None (a Python or numpy real, or a 0-d tensor), got {name}={value!r}")
    return float(value)


def _as_4d(t: Tensor, name: str, B: int, H: int, Tq: int, Tk: int, device) -> Tensor:
    """``t`` as ``[B|1, H|1, Tq|1, Tk]`` (a view), or a ValueError naming the shapes."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}: move it with .to(q.device)")
    if t.dim() > 4:
        raise ValueError(f"{name} must have at most 4 dims [batch, heads, q_len, k_len], got shape {tuple(t.shape)}")
    t4 = t if t.dim() == 4 else t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if not all(s in (1, n) for s, n in zip(t4.shape, (B, H, Tq, Tk))):
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} is not broadcastable to [B, H, Tq, Tk] = {[B, H, Tq, Tk]}: each dim must be 1 or match"
        )
    q_len = Tq if t4.dtype == torch.bool else t4.shape[2]  # a bias may stay [.., 1, Tk]; masks are per query
    return t4 if t4.shape[2:] == (q_len, Tk) else t4.expand(t4.shape[0], t4.shape[1], q_len, Tk)
