"""The blocked backend: attnlab's tiled online-softmax kernel, forward and backward.

Queries and keys are cut into tiles. For each query tile the kernel visits only the key tiles
that the mask's tile plan (:mod:`attnlab.core.tiles`) says are not empty, applies the mask only
to partial tiles, and keeps a running max and sum per row (online softmax). Logits exist for
one piece of work at a time (a batch of short rows, or one chunk of a long row; at most
``BATCH_BYTES``), so memory never grows as ``T²``. The backward recomputes each tile from the
saved log-sum-exp, as FlashAttention does, so training needs no ``T × T`` matrix either.

Masks over a token grid (neighborhood, halo, strided groups) bring a token order in which
tiles are spatially compact boxes; the kernel gathers tokens into that order and scatters the
output back.

Arithmetic is float32 for float32/bfloat16/float16 inputs and float64 for float64 inputs; the
output has the input dtype.
Logit edits (``score_mod``) run in the forward; with gradients, :func:`attnlab.core.attend`
sends them to the reference backend instead.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.core import masks as M
from attnlab.core.backends.base import Inputs, compute_dtype
from attnlab.core.tiles import TilePlan, plan_dense, plan_mask

__all__ = ["Blocked"]


class Blocked:
    """Tiled online-softmax attention that skips empty tiles.

    Args:
        q_tile: query rows per tile (masks with a token order choose their own, about this size).
        k_tile: keys per tile.
        kv_chunk: keys processed together for one query tile; longer rows are streamed in
            chunks of this many keys with the online softmax.
        grid_tile: tokens per tile, about, for masks that order tokens on a grid
            (neighborhood, halo, strided groups): their tiles are boxes of the grid.
    """

    name = "blocked"
    normalizers = ("softmax",)

    def __init__(self, q_tile: int = 128, k_tile: int = 128, kv_chunk: int = 2048, grid_tile: int = 32):
        for k, val in {"q_tile": q_tile, "k_tile": k_tile, "kv_chunk": kv_chunk, "grid_tile": grid_tile}.items():
            if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < 1:
                raise ValueError(f"{k} must be a positive integer, got {k}={val!r}")
        self.q_tile, self.k_tile, self.kv_chunk, self.grid_tile = int(q_tile), int(k_tile), int(kv_chunk), int(grid_tile)

    def __repr__(self) -> str:
        return f"Blocked(q_tile={self.q_tile}, k_tile={self.k_tile}, kv_chunk={self.kv_chunk}, grid_tile={self.grid_tile})"

    def plan(self, x: Inputs) -> TilePlan:
        """The tile plan for these inputs (cached on the mask for predicate masks)."""
        B, H, Tq, _ = x.q.shape
        Tk = x.k.shape[2]
        tq, tk = max(1, min(self.q_tile, Tq)), max(1, min(self.k_tile, Tk))
        if x.dense_mask is None:
            mask = x.mask
            if mask is None and x.bias is not None and bool(torch.isneginf(x.bias).any()):
                allowed = ~torch.isneginf(x.bias).expand(x.bias.shape[0], x.bias.shape[1], Tq, Tk)
                return plan_dense(allowed, q_tile=tq, k_tile=tk)
            return plan_mask(mask or M.full, Tq, Tk, q_tile=tq, k_tile=tk, grid_tile=self.grid_tile, batch=B, heads=H, device=x.q.device)
        return plan_dense(x.allowed(), q_tile=tq, k_tile=tk)

    def __call__(self, x: Inputs) -> Tensor:
        if x.score_mod is not None and x.needs_grad:
            raise ValueError(
                "the blocked backend applies logit edits without gradients: use backend='reference' when training through them"
            )
        return _BlockedAttention.apply(x.q, x.k, x.v, x.bias, self.plan(x), x.scale, x.score_mod, self.kv_chunk)


# --- token order ----------------------------------------------------------------------------


def _to_tiles(t: Tensor, index: Tensor, natural: bool, dim: int = 2) -> Tensor:
    """Gather ``t`` along ``dim`` into tile order; padding slots get whatever (they are masked)."""
    n = index.numel()
    if natural:
        pad = n - t.shape[dim]
        if pad == 0:
            return t
        spec = [0, 0] * (t.dim() - 1 - dim) + [0, pad]
        return F.pad(t, spec)
    return t.index_select(dim, index.clamp(min=0).to(t.device))


def _from_tiles(t: Tensor, index: Tensor, natural: bool, length: int, dim: int = 2) -> Tensor:
    """Inverse of :func:`_to_tiles`: back to original order, padding dropped."""
    if natural:
        return t.narrow(dim, 0, length)
    slots = torch.nonzero(index >= 0).flatten()
    inv = torch.empty(length, dtype=torch.long)
    inv[index[slots]] = slots
    return t.index_select(dim, inv.to(t.device))


BATCH_BYTES = 4 * 2**20  # float32 logits computed at once (more spills the caches: 1.4x slower at 128x128)
LOG2E = 1.4426950408889634


def _exp_(x: Tensor) -> Tensor:
    """``exp(x)`` in place, as ``2 ** (x · log2 e)``.

    On a busy machine, ``torch.exp`` on float32 CPU tensors came out up to 1.2e-5 too large
    (relative) in about 1 process in 25, moving outputs by 6e-5; never with
    ``MKL_NUM_THREADS=1``, so MKL's threaded vector math is the suspect. ``exp2`` showed no
    such error in 100 runs under the same load.
    """
    return x.mul_(LOG2E).exp2_()


@dataclass
class _Chunk:
    """Key tiles ``[R, n]`` for each of a work item's query tiles, and how to mask them.

    ``span`` is a slice when ``R == 1`` and the tiles are consecutive (a view, no gather).
    Either ``row_mask [R, B', H', tq, n*tk]`` masks the whole chunk, or ``local [p]`` and
    ``tile_masks [p, B', H', tq, tk]`` mask only its partial tiles (``R == 1``); or neither.
    """

    tiles: Tensor
    span: slice | None = None
    row_mask: Tensor | None = None
    local: Tensor | None = None
    tile_masks: Tensor | None = None


@dataclass
class _Work:
    """Query tiles ``rows [R]`` computed together, over one or more chunks of key tiles."""

    rows: Tensor
    chunks: list[_Chunk]


def _schedule(plan: TilePlan, kv_chunk: int) -> list[_Work]:
    """The order of work for a plan (cached on it).

    Rows whose keys fit one chunk are grouped by tile count and computed as one batched matmul
    (local masks have many short rows; a loop per row would be slower than the arithmetic);
    longer rows stream over chunks of at most ``kv_chunk`` keys with the online softmax, and
    only their partial tiles are masked.
    """
    per = max(1, kv_chunk // plan.k_tile)
    if per in plan.chunk_cache:
        return plan.chunk_cache[per]
    tq, tk = plan.q_tile, plan.k_tile
    work: list[_Work] = []
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(plan.rows):
        n = row.k_tiles.numel()
        if 0 < n <= per:
            groups.setdefault(n, []).append(i)
        elif n > per:
            chunks = []
            for c0 in range(0, n, per):
                tiles = row.k_tiles[c0 : c0 + per]
                t0, t1 = int(tiles[0]), int(tiles[-1]) + 1
                sel = (row.partial >= c0) & (row.partial < c0 + tiles.numel())
                local = row.partial[sel] - c0
                chunks.append(
                    _Chunk(
                        tiles[None],
                        slice(t0, t1) if t1 - t0 == tiles.numel() else None,
                        local=local if local.numel() else None,
                        tile_masks=row.masks[sel] if local.numel() else None,
                    )
                )
            work.append(_Work(torch.tensor([i], device=row.k_tiles.device), chunks))
    for n, idx in groups.items():
        rows = [plan.rows[i] for i in idx]
        device = rows[0].k_tiles.device
        mask = None
        shapes = [r.masks.shape[1:3] for r in rows if r.masks is not None]
        if shapes:
            mask = torch.ones(len(rows), *shapes[0], tq, n, tk, dtype=torch.bool, device=device)
            for j, r in enumerate(rows):
                if r.masks is not None:
                    mask[j][:, :, :, r.partial] = r.masks.permute(1, 2, 3, 0, 4)
            mask = mask.view(len(rows), *shapes[0], tq, n * tk)
        work.append(_Work(torch.tensor(idx, device=device), [_Chunk(torch.stack([r.k_tiles for r in rows]), row_mask=mask)]))
    plan.chunk_cache[per] = work
    return work


def _split_heads(x: Tensor, Hkv: int, G: int) -> Tensor:
    """``[R, B', H', *rest]`` -> ``[B', Hkv', R, G', *rest]`` with ``H' = 1`` or ``Hkv * G``."""
    R, bb, hh, *rest = x.shape
    x = x.reshape(R, bb, 1, 1, *rest) if hh == 1 else x.reshape(R, bb, Hkv, G, *rest)
    return x.permute(1, 2, 0, 3, *range(4, 4 + len(rest)))


class _Tiled:
    """Inputs in the kernel's layout, and the logits of a chunk.

    Queries (and everything per query: outputs, lse, gradients) are ``[B, Hkv, nq, G*tq, X]``:
    a query tile of all G heads that share a kv head is one contiguous block. Keys and values
    are ``[B, Hkv, nk, tk, X]``. Gathering R query tiles or R×n key tiles is then one index op
    whose result feeds a batched matmul without further copies.
    """

    def __init__(self, q, k, v, bias, plan: TilePlan, scale: float, score_mod=None):
        B, H, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        self.B, self.H, self.Hkv, self.G = B, H, Hkv, H // Hkv
        self.tq, self.tk = plan.q_tile, plan.k_tile
        self.nq, self.nk = Lq // self.tq, Lk // self.tk
        self.qt = self.to_rows(q)
        self.kt = k.view(B, Hkv, self.nk, self.tk, D)
        self.vt = v.view(B, Hkv, self.nk, self.tk, v.shape[-1])
        self.bias6 = None if bias is None else self.tiles6(bias)
        self.scale, self.score_mod = scale, score_mod
        self.q_pos = plan.order.q_index.to(q.device).clamp(min=0).view(self.nq, self.tq)
        self.k_pos = plan.order.k_index.to(q.device).clamp(min=0).view(self.nk, self.tk)

    def to_rows(self, t: Tensor) -> Tensor:
        """``[B, H, Lq, X]`` -> ``[B, Hkv, nq, G*tq, X]``."""
        x = t.view(self.B, self.Hkv, self.G, self.nq, self.tq, t.shape[-1]).transpose(2, 3)
        return x.reshape(self.B, self.Hkv, self.nq, self.G * self.tq, t.shape[-1])

    def from_rows(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`to_rows`."""
        x = t.view(self.B, self.Hkv, self.nq, self.G, self.tq, t.shape[-1]).transpose(2, 3)
        return x.reshape(self.B, self.H, self.nq * self.tq, t.shape[-1])

    def tiles6(self, bias: Tensor) -> Tensor:
        """``[B', H', Lq, Lk]`` viewed as ``[nq, nk, B', H', tq, tk]``."""
        bb, hh = bias.shape[:2]
        return bias.view(bb, hh, self.nq, self.tq, self.nk, self.tk).permute(2, 4, 0, 1, 3, 5)

    def keys(self, t5: Tensor, c: _Chunk) -> Tensor:
        """Keys (or values) of a chunk: ``[B, Hkv, R, n*tk, X]``."""
        R, n = c.tiles.shape
        x = t5[:, :, c.span].unsqueeze(2) if c.span is not None else t5[:, :, c.tiles]  # [B, Hkv, R, n, tk, X]
        return x.reshape(self.B, self.Hkv, R, n * self.tk, t5.shape[-1])

    def scores(self, qs: Tensor, rows: Tensor, c: _Chunk) -> tuple[Tensor, Tensor]:
        """Logits ``[B, Hkv, R, G*tq, n*tk]`` of scaled queries ``qs [B, Hkv, R, G*tq, D]``, and the keys."""
        R, n = c.tiles.shape
        ks = self.keys(self.kt, c)
        s = torch.matmul(qs, ks.transpose(-1, -2))  # [B, Hkv, R, G*tq, n*tk]
        if self.bias6 is None and self.score_mod is None and c.row_mask is None and c.local is None:
            return s, ks
        s7 = s.view(self.B, self.Hkv, R, self.G, self.tq, n, self.tk)
        if self.bias6 is not None:
            b = self.bias6[rows[:, None], c.tiles].permute(0, 2, 3, 4, 1, 5)  # [R, B', H', tq, n, tk]
            s7 = s7.add_(_split_heads(b, self.Hkv, self.G))
        if self.score_mod is not None:
            bi = torch.arange(self.B, device=s.device).view(-1, 1, 1, 1, 1, 1, 1)
            hi = torch.arange(self.H, device=s.device).view(1, self.Hkv, 1, self.G, 1, 1, 1)
            qi = self.q_pos[rows].view(1, 1, R, 1, self.tq, 1, 1)
            ki = self.k_pos[c.tiles].view(1, 1, R, 1, 1, n, self.tk)
            s7 = self.score_mod(s7, bi, hi, qi, ki)
        if c.row_mask is not None:
            m = _split_heads(c.row_mask, self.Hkv, self.G)  # [B', Hkv', R, G', tq, n*tk]
            s7 = s7.view(self.B, self.Hkv, R, self.G, self.tq, n * self.tk).masked_fill_(~m, float("-inf"))
        elif c.local is not None:  # only the partial tiles are masked
            m = _split_heads(c.tile_masks, self.Hkv, self.G).permute(0, 1, 3, 4, 2, 5).unsqueeze(2)  # [B', Hkv', 1, G', tq, p, tk]
            s7[:, :, :, :, :, c.local] = s7[:, :, :, :, :, c.local].masked_fill(~m, float("-inf"))
        return s7.reshape(self.B, self.Hkv, R, self.G * self.tq, n * self.tk), ks

    def slices(self, w: _Work):
        """``w`` cut into pieces of at most :data:`BATCH_BYTES` of logits (rows of one chunk only)."""
        if len(w.chunks) > 1 or w.rows.numel() == 1:
            yield w
            return
        c = w.chunks[0]
        step = max(1, BATCH_BYTES // (4 * self.B * self.H * self.tq * c.tiles.numel() // w.rows.numel() * self.tk))
        for r0 in range(0, w.rows.numel(), step):
            r1 = r0 + step
            mask = None if c.row_mask is None else c.row_mask[r0:r1]
            yield _Work(w.rows[r0:r1], [_Chunk(c.tiles[r0:r1], row_mask=mask)])


def _forward(q, k, v, bias, plan, scale, score_mod, kv_chunk):
    """Tiled forward on tile-ordered inputs: ``out [B, H, Lq', Dv]`` and ``lse [B, H, Lq', 1]``."""
    t = _Tiled(q, k, v, bias, plan, scale, score_mod)
    B, Hkv, nq, Gtq, _ = t.qt.shape
    Dv = v.shape[-1]
    out = q.new_zeros(B, Hkv, nq, Gtq, Dv)
    lse = q.new_full((B, Hkv, nq, Gtq, 1), float("-inf"))
    for whole in _schedule(plan, kv_chunk):
        for w in t.slices(whole):
            R = w.rows.numel()
            qs = t.qt[:, :, w.rows] * scale  # [B, Hkv, R, G*tq, D]
            m = q.new_full((B, Hkv, R, Gtq, 1), float("-inf"))
            l = torch.zeros_like(m)
            acc = q.new_zeros(B, Hkv, R, Gtq, Dv)
            for c in w.chunks:  # online softmax over chunks of keys
                s, _ = t.scores(qs, w.rows, c)
                m_new = torch.maximum(m, s.amax(-1, keepdim=True))
                m_safe = torch.where(torch.isneginf(m_new), 0.0, m_new)  # rows with nothing visible yet
                p = _exp_(s.sub_(m_safe))  # [B, Hkv, R, G*tq, n*tk]
                alpha = _exp_(m - m_safe)
                l = l.mul_(alpha).add_(p.sum(-1, keepdim=True))
                acc = acc.mul_(alpha).add_(torch.matmul(p, t.keys(t.vt, c)))
                m = m_new
            m_safe = torch.where(torch.isneginf(m), 0.0, m)
            out[:, :, w.rows] = acc / l.clamp_min(1e-30)  # 0 where nothing was visible
            lse[:, :, w.rows] = m_safe + torch.log(l)  # -inf there
    return t.from_rows(out), t.from_rows(lse)


def _backward(do, q, k, v, out, lse, bias, plan, scale, kv_chunk, need_dbias):
    """Gradients of q, k, v (and the bias) by tile recomputation from ``lse``."""
    t = _Tiled(q, k, v, bias, plan, scale)
    lse_t = t.to_rows(torch.where(torch.isneginf(lse), float("inf"), lse))  # empty rows: p = exp(s - inf) = 0
    delta_t = t.to_rows((do * out).sum(-1, keepdim=True))
    do_t = t.to_rows(do)
    dq_t = torch.zeros_like(t.qt)
    dkt, dvt = torch.zeros_like(t.kt), torch.zeros_like(t.vt)
    dbias = torch.zeros_like(bias) if need_dbias else None
    dbias6 = None if dbias is None else t.tiles6(dbias)
    B, Hkv = t.B, t.Hkv
    for whole in _schedule(plan, kv_chunk):
        for w in t.slices(whole):
            R = w.rows.numel()
            qs = t.qt[:, :, w.rows] * scale
            dos = do_t[:, :, w.rows]  # [B, Hkv, R, G*tq, Dv]
            lse_r, delta_r = lse_t[:, :, w.rows], delta_t[:, :, w.rows]
            dqs = torch.zeros_like(qs)
            for c in w.chunks:
                n = c.tiles.shape[1]
                s, ks = t.scores(qs, w.rows, c)
                p = _exp_(s.sub_(lse_r))  # [B, Hkv, R, G*tq, n*tk]
                dp = torch.matmul(dos, t.keys(t.vt, c).transpose(-1, -2))
                ds = dp.sub_(delta_r).mul_(p)  # gradient of the scaled, biased logits
                dqs += torch.matmul(ds, ks)
                flat = c.tiles.flatten()
                dkt.index_add_(2, flat, torch.matmul(ds.transpose(-1, -2), qs).view(B, Hkv, R * n, t.tk, -1))
                dvt.index_add_(2, flat, torch.matmul(p.transpose(-1, -2), dos).view(B, Hkv, R * n, t.tk, -1))
                if dbias6 is not None:
                    bb, hh = bias.shape[:2]
                    hk, g = (1, 1) if hh == 1 else (Hkv, t.G)
                    ds7 = ds.view(B, Hkv, R, t.G, t.tq, n, t.tk).sum_to_size(bb, hk, R, g, t.tq, n, t.tk)
                    ds7 = ds7.transpose(2, 3).reshape(bb, hh, R, t.tq, n, t.tk).permute(2, 4, 0, 1, 3, 5)  # [R, n, B', H', tq, tk]
                    dbias6.index_put_((w.rows[:, None].expand(R, n), c.tiles), ds7, accumulate=True)
            dq_t[:, :, w.rows] = dqs.mul_(scale)
    return t.from_rows(dq_t), dkt.view_as(k), dvt.view_as(v), dbias


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, plan: TilePlan, scale, score_mod, kv_chunk):
        order, nat, dt = plan.order, plan.natural, compute_dtype(q)
        qp = _to_tiles(q.to(dt), order.q_index, nat)
        kp = _to_tiles(k.to(dt), order.k_index, nat)
        vp = _to_tiles(v.to(dt), order.k_index, nat)
        bp = _tiled_bias(bias, plan, dt)
        out, lse = _forward(qp, kp, vp, bp, plan, scale, score_mod, kv_chunk)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.plan, ctx.scale, ctx.kv_chunk = plan, scale, kv_chunk
        return _from_tiles(out, order.q_index, nat, plan.lq).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, out, lse = ctx.saved_tensors
        plan = ctx.plan
        order, nat, dt = plan.order, plan.natural, compute_dtype(q)
        qp = _to_tiles(q.to(dt), order.q_index, nat)
        kp = _to_tiles(k.to(dt), order.k_index, nat)
        vp = _to_tiles(v.to(dt), order.k_index, nat)
        dop = _to_tiles(dout.to(dt), order.q_index, nat)
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(dop, qp, kp, vp, out, lse, _tiled_bias(bias, plan, dt), plan, ctx.scale, ctx.kv_chunk, need_dbias)
        dq = _from_tiles(dq, order.q_index, nat, plan.lq).to(q.dtype)
        dk = _from_tiles(dk, order.k_index, nat, plan.lk).to(k.dtype)
        dv = _from_tiles(dv, order.k_index, nat, plan.lk).to(v.dtype)
        if dbias is not None:
            dbias = _from_tiles(_from_tiles(dbias, order.q_index, nat, plan.lq), order.k_index, nat, plan.lk, dim=3)
            dbias = dbias.sum_to_size(bias.shape).to(bias.dtype)
        return dq, dk, dv, dbias, None, None, None, None


def _tiled_bias(bias: Tensor | None, plan: TilePlan, dtype: torch.dtype) -> Tensor | None:
    """The bias expanded to ``[B', H', Lq, Lk]`` and gathered into tile order on both axes."""
    if bias is None:
        return None
    b = bias.to(dtype).expand(bias.shape[0], bias.shape[1], plan.lq, plan.lk)
    b = _to_tiles(b, plan.order.q_index, plan.natural, dim=2)
    return _to_tiles(b, plan.order.k_index, plan.natural, dim=3).contiguous()
