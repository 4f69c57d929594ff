"""The row pass: attention one chunk of query rows at a time, for probes and probability edits.

Probes must see normalised probabilities and probability edits must change them before they
multiply the values, so this pass computes, for each chunk of query rows, the whole rows over
the span of keys the mask leaves visible (a causal chunk never computes keys after its last
query), normalises them in float32 (float64 for float64 inputs) with the softmax or paper 68's
ReLU (``ReLU(s) / n_visible``), applies the edits, hands the chunk to every probe and
multiplies by the values. Only one chunk of rows exists at a time: memory is
``O(chunk · Tk)``, never ``O(Tq · Tk)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core.backends.base import Inputs, compute_dtype
from attnlab.core.backends.reference import weigh_values
from attnlab.core.masks import EMPTY, FULL, Order
from attnlab.core.site import AttentionChunk, Probe, Site

__all__ = ["row_pass"]

CHUNK_BYTES = 8 * 2**20  # float32 logits per chunk of rows: small enough to stay in cache between passes


def row_pass(x: Inputs, *, probs_edits: Sequence[Callable], probes: Sequence[Probe], site: Site) -> Tensor:
    """Attention output ``[B, H, Tq, Dv]`` computed chunk by chunk of query rows.

    Args:
        x: checked inputs (mask, bias and logit edits included).
        probs_edits: ``fn(probs, q_idx, kv_idx) -> probs`` applied in order to each chunk.
        probes: observers fed each chunk after the edits.
        site: passed to the probes.
    """
    B, H, Tq, D = x.q.shape
    Hkv, Tk, Dv = x.k.shape[1], x.k.shape[2], x.v.shape[-1]
    G = H // Hkv
    dev = x.q.device
    dt = compute_dtype(x.q)
    rows = max(1, min(Tq, CHUNK_BYTES // max(1, 4 * B * H * Tk)))
    k, v = x.k.to(dt), x.v.to(dt)
    nan_values = bool(v.isnan().any())  # then a value reaches only the queries that see it (0 · NaN is NaN)
    hidden = torch.finfo(dt).min  # hidden keys: finite, so logits stay usable (0·min = 0), and exp underflows to 0
    spans = _spans(x, rows)
    outs = []
    for i, q0 in enumerate(range(0, Tq, rows)):
        q1 = min(Tq, q0 + rows)
        n = q1 - q0
        q_idx = torch.arange(q0, q1, device=dev)
        if spans is not None:  # the mask's tile bounds give the span and where hiding starts
            k0, c0, k1 = spans[i]
            visible, k0, k1 = _chunk_visible(x, q0, q1, k0, c0, k1)
            c0 = max(0, c0 - k0)
        else:
            visible, c0 = _visible(x, q0, q1), None  # [B|1, H|1, n, Tk] or None
            k0, k1 = 0, Tk
            if visible is not None:
                cols = torch.nonzero(visible.flatten(0, 2).any(0)).flatten()
                k0, k1 = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 0)
                visible = visible[..., k0:k1]
            else:
                visible, c0 = torch.ones(1, 1, n, Tk, dtype=torch.bool, device=dev), Tk
        kv_idx = torch.arange(k0, k1, device=dev)
        qc = (x.q[:, :, q0:q1].to(dt) * x.scale).reshape(B, Hkv, G * n, D)
        s = torch.matmul(qc, k[:, :, k0:k1].transpose(-1, -2)).view(B, H, n, k1 - k0)  # [B, H, n, Ts]
        exact = x.bias is None and x.score_mod is None  # logits are finite wherever visible
        if x.bias is not None:
            bq = x.bias[:, :, q0:q1] if x.bias.shape[2] > 1 else x.bias  # [B|1, H|1, n|1, Tk]
            s = s + bq[..., k0:k1].to(dt)
            visible = visible & ~torch.isneginf(bq[..., k0:k1])  # a -inf bias hides the key, even from a NaN logit
        if x.score_mod is not None:
            b = torch.arange(B, device=dev).view(-1, 1, 1, 1)
            h = torch.arange(H, device=dev).view(1, -1, 1, 1)
            s = x.score_mod(s, b, h, q_idx.view(1, 1, -1, 1), kv_idx.view(1, 1, 1, -1))
        if not exact:  # a bias or an edit may hide keys too (-inf)
            visible, c0 = visible & ~torch.isneginf(s), None
        if c0 is None:  # the first key column some query cannot see (causal: the diagonal block)
            hid = ~visible.flatten(0, 2).all(0)  # [Ts]
            c0 = int(hid.nonzero()[0]) if bool(hid.any()) else k1 - k0
        if c0 < k1 - k0:
            s[..., c0:].masked_fill_(~visible[..., c0:], hidden)
        if x.normalizer == "relu":  # paper 68: ReLU(s) / n, n = keys the query may see (hidden keys: relu(min) = 0)
            p = torch.relu(s).masked_fill(~visible, 0.0) / visible.sum(-1, keepdim=True).clamp(min=1)  # [B, H, n, Ts]
        else:
            p = torch.softmax(s, dim=-1)
        if c0 == 0 and x.normalizer == "softmax":  # every query sees the first key of the span otherwise: no empty rows
            empty = ~visible.any(-1, keepdim=True)  # rows with nothing to attend to
            if bool(empty.any()):
                p = p.masked_fill(empty, 0.0)
        for fn in probs_edits:
            p = fn(p, q_idx, kv_idx)
        if probes:
            chunk = AttentionChunk(
                probs=p.detach(), visible=visible, q_idx=q_idx, kv_start=k0, lk=Tk, normalizer=x.normalizer,
                logits=s.detach() if exact and not probs_edits and x.normalizer == "softmax" else None,
            )  # fmt: skip
            for probe in probes:
                probe.observe(chunk, site)
        pv = p.reshape(B, Hkv, G * n, k1 - k0)
        if nan_values:
            seen = visible.expand(B, H, n, k1 - k0).reshape(B, Hkv, G * n, k1 - k0)
            o = weigh_values(pv, v[:, :, k0:k1], seen)  # [B, Hkv, G*n, Dv]
        else:
            o = torch.matmul(pv, v[:, :, k0:k1])  # [B, Hkv, G*n, Dv]
        outs.append(o.view(B, H, n, Dv))
    return torch.cat(outs, dim=2).to(x.q.dtype) if outs else x.q.new_zeros(B, H, 0, Dv)


KEY_TILE = 64  # keys per tile when a mask's tile bounds narrow each chunk's span


def _spans(x: Inputs, rows: int) -> list[tuple[int, int, int]] | None:
    """Per chunk of ``rows`` queries, ``(k0, c0, k1)``: the keys ``k0:k1`` it may see, of which
    ``k0:c0`` every query sees; from the mask's tile bounds, so that only ``c0:k1`` is evaluated.

    None when the mask gives no bounds, or a dense mask or a -inf bias hides keys as well.
    """
    if x.mask is None or x.dense_mask is not None or (x.bias is not None and bool(torch.isneginf(x.bias).any())):
        return None
    Tq, Tk = x.q.shape[2], x.k.shape[2]
    if Tq == 0 or Tk == 0:
        return None
    x.mask.check_lengths(Tq, Tk)
    bounds = x.mask.tile_bounds(Order.natural(Tq, Tk, rows, KEY_TILE))  # [nq, nk]
    if bounds is None:
        return None
    nk = bounds.shape[1]
    col = torch.arange(nk)
    seen = bounds != EMPTY
    first = torch.where(seen, col, nk).amin(1)  # [nq] first tile with a visible key
    last = torch.where(seen, col, -1).amax(1)
    open_ = (bounds != FULL) & (col >= first[:, None]) & (col <= last[:, None])  # tiles to evaluate
    start = torch.where(open_, col, last[:, None] + 1).amin(1)
    out = []
    for f, c, e in zip(first.tolist(), start.tolist(), (last + 1).tolist()):
        if f >= nk:  # nothing visible
            out.append((0, 0, 0))
        else:
            out.append((f * KEY_TILE, min(c * KEY_TILE, Tk), min(e * KEY_TILE, Tk)))
    return out


def _chunk_visible(x: Inputs, q0: int, q1: int, k0: int, c0: int, k1: int) -> tuple[Tensor, int, int]:
    """Keys each query in ``q0:q1`` sees, knowing that all see ``k0:c0``: ``visible [B|1, H|1, n, Ts]``
    and the span ``k0:k1`` trimmed to the keys some query sees."""
    m = x.mask
    dev = x.q.device
    B, H = x.q.shape[:2]
    nb, nh = B if m.batched else 1, H if m.headed else 1
    if c0 == k1:
        return torch.ones(nb, nh, q1 - q0, k1 - k0, dtype=torch.bool, device=dev), k0, k1
    b = torch.arange(nb, device=dev).view(-1, 1, 1, 1)
    h = torch.arange(nh, device=dev).view(1, -1, 1, 1)
    q_idx = torch.arange(q0, q1, device=dev).view(1, 1, -1, 1)
    part = m.fn(b, h, q_idx, torch.arange(c0, k1, device=dev).view(1, 1, 1, -1)).expand(nb, nh, q1 - q0, k1 - c0)
    cols = torch.nonzero(part.flatten(0, 2).any(0)).flatten()  # open columns some query sees
    if c0 == k0:  # no column is seen by all: trim both ends
        k0, k1 = (c0 + int(cols[0]), c0 + int(cols[-1]) + 1) if cols.numel() else (c0, c0)
        return part[..., k0 - c0 : k1 - c0].contiguous(), k0, k1
    k1 = c0 + int(cols[-1]) + 1 if cols.numel() else c0
    out = torch.ones(nb, nh, q1 - q0, k1 - k0, dtype=torch.bool, device=dev)
    out[..., c0 - k0 :] = part[..., : k1 - c0]
    return out, k0, k1


def _visible(x: Inputs, q0: int, q1: int) -> Tensor | None:
    """Keys each query in ``q0:q1`` may see: the mask, and a bias that is not -inf."""
    B, H, _, _ = x.q.shape
    Tk = x.k.shape[2]
    dev = x.q.device
    out = None
    if x.mask is not None:
        m = x.mask
        m.check_lengths(x.q.shape[2], Tk)
        b = torch.arange(B if m.batched else 1, device=dev).view(-1, 1, 1, 1)
        h = torch.arange(H if m.headed else 1, device=dev).view(1, -1, 1, 1)
        out = m.fn(b, h, torch.arange(q0, q1, device=dev).view(1, 1, -1, 1), torch.arange(Tk, device=dev).view(1, 1, 1, -1))
        out = out.expand(b.shape[0], h.shape[1], q1 - q0, Tk)
    if x.dense_mask is not None:
        d = x.dense_mask[:, :, q0:q1]
        out = d if out is None else out & d
    if x.bias is not None and bool(torch.isneginf(x.bias).any()):
        bq = x.bias[:, :, q0:q1] if x.bias.shape[2] > 1 else x.bias
        d = ~torch.isneginf(bq)
        out = d if out is None else out & d
    return out
