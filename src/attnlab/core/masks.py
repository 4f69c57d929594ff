"""Attention masks as predicates.

A mask is a predicate ``(b, h, q_idx, kv_idx) -> bool`` (True = may attend), written with
broadcasting torch ops so that the same function serves three consumers:

- :meth:`Mask.dense` materialises it for the reference backend and for SDPA;
- :meth:`Mask.tile_bounds` and :func:`attnlab.core.tiles.plan_mask` say which (q-tile, k-tile)
  pairs are empty, full or partial, so the blocked backend skips empty tiles and full tiles skip
  the mask;
- :meth:`Mask.to_block_mask` turns it into a FlexAttention ``BlockMask``.

Variants compose: ``sliding_window(256) & causal``, ``prefix_lm(8) | segments(ids)``, ``~m``.

Masks over an N-d grid of tokens (``neighborhood``, ``blocks_with_halo``, ``strided_groups``)
are products of one rule per axis. They also give a token order (tokens of one spatial box,
or one dilation group, stored next to each other), so tiles are spatially compact and their
states are known exactly from small per-axis tables, as NATTEN does with its token permutation.

Index convention: token ``i`` of an N-d grid of ``shape`` has row-major coordinates
(``i = ((c0 * n1) + c1) * n2 + c2``, like ``torch.flatten``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "EMPTY",
    "FULL",
    "PARTIAL",
    "Mask",
    "blocks_with_halo",
    "causal",
    "full",
    "isolation",
    "modality_mutual",
    "neighborhood",
    "prefix_lm",
    "segments",
    "sliding_window",
    "strided_groups",
]

# Tile states, ordered so that min/max combine them: EMPTY < PARTIAL < FULL.
EMPTY, PARTIAL, FULL = 0, 1, 2

Predicate = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class Order:
    """Where each tile slot's token comes from.

    ``q_index``/``k_index`` hold original token positions, padded with -1 (never attended);
    consecutive runs of ``q_tile``/``k_tile`` slots are tiles. ``source`` is the mask that chose
    the order (None for the natural order) and ``box`` the tile's extent per grid axis.
    """

    q_index: Tensor
    k_index: Tensor
    q_tile: int
    k_tile: int
    source: Mask | None = None
    box: tuple[int, ...] | None = None

    @staticmethod
    def natural(lq: int, lk: int, q_tile: int, k_tile: int) -> Order:
        """Tokens in their own order, padded at the end to whole tiles."""
        q = torch.arange(-(-lq // q_tile) * q_tile)
        k = torch.arange(-(-lk // k_tile) * k_tile)
        return Order(torch.where(q < lq, q, -1), torch.where(k < lk, k, -1), q_tile, k_tile)


class Mask:
    """A named attention predicate ``fn(b, h, q_idx, kv_idx) -> bool`` (True = may attend).

    Args:
        fn: the predicate; arguments broadcast against each other, like FlexAttention's
            ``mask_mod``.
        name: what the mask prints as, e.g. ``"sliding_window(256, 0)"``.
        batched: the predicate depends on ``b`` (e.g. per-sequence document ids).
        headed: the predicate depends on ``h``.

    Example:
        >>> m = sliding_window(2) & causal
        >>> m.dense(4, 4)[0, 0].int()
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1]], dtype=torch.int32)
    """

    def __init__(self, fn: Predicate, name: str, *, batched: bool = False, headed: bool = False):
        self.fn = fn
        self.name = name
        self.batched = batched
        self.headed = headed
        self.description = ""  # a sentence for `attnlab list masks`, where no factory docstring says it
        self._plans: dict = {}  # tile plans by (lq, lk, tiles, batch, heads, device); see core.tiles

    def __call__(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self.fn(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return self.name

    def __and__(self, other: Mask) -> Mask:
        return _And(self, _check_mask(other, "&"))

    def __or__(self, other: Mask) -> Mask:
        return _Or(self, _check_mask(other, "|"))

    def __invert__(self) -> Mask:
        return _Not(self)

    # --- materialisation -------------------------------------------------------------------
    def dense(self, lq: int, lk: int, *, batch: int = 1, heads: int = 1, device=None) -> Tensor:
        """The mask as a boolean tensor ``[B', H', lq, lk]``.

        ``B'`` is ``batch`` if the mask depends on the batch index, else 1; ``H'`` likewise.
        """
        self.check_lengths(lq, lk)
        b = torch.arange(batch if self.batched else 1, device=device).view(-1, 1, 1, 1)
        h = torch.arange(heads if self.headed else 1, device=device).view(1, -1, 1, 1)
        q_idx = torch.arange(lq, device=device).view(1, 1, -1, 1)
        kv_idx = torch.arange(lk, device=device).view(1, 1, 1, -1)
        out = self.fn(b, h, q_idx, kv_idx)
        return out.expand(b.shape[0], h.shape[1], lq, lk)

    def check_lengths(self, lq: int, lk: int) -> None:
        """Raise ``ValueError`` if the mask cannot apply to ``lq`` queries and ``lk`` keys."""

    # --- tiles ------------------------------------------------------------------------------
    def token_order(self, lq: int, lk: int, tile: int) -> Order | None:
        """A token order that makes tiles of about ``tile`` tokens compact, or None (natural order)."""
        return None

    def tile_bounds(self, order: Order) -> Tensor | None:
        """Conservative tile states ``[n_q_tiles, n_k_tiles]`` (int8) under ``order``, or None.

        ``EMPTY`` and ``FULL`` must be certain; ``PARTIAL`` means "evaluate to find out";
        None means nothing is known. Padding slots (-1) are never attended.
        """
        return None

    def to_block_mask(self, lq: int, lk: int, *, batch: int = 1, heads: int = 1, device=None, block_size: int = 128):
        """The mask as a FlexAttention ``BlockMask``."""
        from torch.nn.attention.flex_attention import create_block_mask

        self.check_lengths(lq, lk)
        return create_block_mask(
            self.fn,
            batch if self.batched else None,
            heads if self.headed else None,
            lq,
            lk,
            device=device if device is not None else "cpu",
            BLOCK_SIZE=block_size,
        )


def _check_mask(other, op: str) -> Mask:
    if not isinstance(other, Mask):
        raise TypeError(f"cannot combine a Mask with {type(other).__name__} using {op}: both sides must be Masks")
    return other


class _And(Mask):
    def __init__(self, a: Mask, b: Mask):
        super().__init__(
            lambda b_, h, q, kv: a.fn(b_, h, q, kv) & b.fn(b_, h, q, kv),
            f"({a.name} & {b.name})",
            batched=a.batched or b.batched,
            headed=a.headed or b.headed,
        )
        self.parts = (a, b)

    def check_lengths(self, lq, lk):
        for p in self.parts:
            p.check_lengths(lq, lk)

    def token_order(self, lq, lk, tile):
        return self.parts[0].token_order(lq, lk, tile) or self.parts[1].token_order(lq, lk, tile)

    def tile_bounds(self, order):
        a, b = (p.tile_bounds(order) for p in self.parts)
        if a is None or b is None:
            known = a if b is None else b
            # Only EMPTY survives from one side: the other side's FULL says nothing.
            return None if known is None else known.clamp(max=PARTIAL)
        return torch.minimum(a, b)


class _Or(Mask):
    def __init__(self, a: Mask, b: Mask):
        super().__init__(
            lambda b_, h, q, kv: a.fn(b_, h, q, kv) | b.fn(b_, h, q, kv),
            f"({a.name} | {b.name})",
            batched=a.batched or b.batched,
            headed=a.headed or b.headed,
        )
        self.parts = (a, b)

    check_lengths = _And.check_lengths
    token_order = _And.token_order

    def tile_bounds(self, order):
        a, b = (p.tile_bounds(order) for p in self.parts)
        if a is None or b is None:
            known = a if b is None else b
            return None if known is None else known.clamp(min=PARTIAL)
        return torch.maximum(a, b)


class _Not(Mask):
    def __init__(self, a: Mask):
        super().__init__(lambda b, h, q, kv: ~a.fn(b, h, q, kv), f"~{a.name}", batched=a.batched, headed=a.headed)
        self.part = a

    def check_lengths(self, lq, lk):
        self.part.check_lengths(lq, lk)

    def token_order(self, lq, lk, tile):
        return self.part.token_order(lq, lk, tile)

    def tile_bounds(self, order):
        a = self.part.tile_bounds(order)
        if a is None:
            return None
        out = FULL - a  # EMPTY <-> FULL, PARTIAL stays
        # Padding is never attended, so a tile with padding cannot be FULL even when negated.
        q_pad = (order.q_index.view(-1, order.q_tile) < 0).any(1)  # [nq]
        k_pad = (order.k_index.view(-1, order.k_tile) < 0).any(1)  # [nk]
        padded = q_pad[:, None] | k_pad[None, :]
        return torch.where(padded & (out == FULL), PARTIAL, out).to(torch.int8)


# --- masks along the sequence -----------------------------------------------------------------


class _Band(Mask):
    """Keys with ``lo <= q_idx - kv_idx <= hi``; tile states are exact and computed from ranges."""

    def __init__(self, lo: float, hi: float, name: str):
        def fn(b, h, q_idx, kv_idx):
            d = q_idx - kv_idx
            return (d >= lo) & (d <= hi)

        super().__init__(fn, name)
        self.lo, self.hi = lo, hi

    def tile_bounds(self, order):
        q_lo, q_hi, q_ok = _tile_ranges(order.q_index, order.q_tile)  # contiguous tiles only
        k_lo, k_hi, k_ok = _tile_ranges(order.k_index, order.k_tile)
        if q_lo is None or k_lo is None:
            return None
        d_min = q_lo[:, None] - k_hi[None, :]  # smallest q - kv in the tile
        d_max = q_hi[:, None] - k_lo[None, :]
        empty = (d_max < self.lo) | (d_min > self.hi)
        full = (d_min >= self.lo) & (d_max <= self.hi) & q_ok[:, None] & k_ok[None, :]
        return _states(empty, full)


def _tile_ranges(index: Tensor, tile: int):
    """Per tile: first and last real position, and whether the tile has no padding.

    Returns Nones if some tile is not a contiguous ascending run of positions.
    """
    t = index.view(-1, tile)
    real = t >= 0
    first = torch.where(real, t, torch.iinfo(t.dtype).max).amin(1)
    last = t.amax(1)
    count = real.sum(1)
    contiguous = ((last - first + 1) == count) | (count == 0)
    if not bool(contiguous.all()):
        return None, None, None
    return first, last, count == tile


def _states(empty: Tensor, full: Tensor) -> Tensor:
    out = torch.full(empty.shape, PARTIAL, dtype=torch.int8)
    out[full] = FULL
    out[empty] = EMPTY
    return out


causal = _Band(0, math.inf, "causal")
causal.description = "Each query sees itself and every earlier key (q_idx >= kv_idx, SDPA's top-left alignment)."

full = _Band(-math.inf, math.inf, "full")
full.description = "Every query sees every key."


def _cites(paper: str):
    """Decorator: a mask factory's PAPERS.md numbers, as ``fn.paper`` (read by ``attnlab list masks``)."""

    def deco(fn):
        fn.paper = paper
        return fn

    return deco


def sliding_window(left: int, right: int = 0) -> Mask:
    """Keys within ``left`` positions before and ``right`` after the query (both inclusive).

    ``sliding_window(256)`` is causal local attention over 257 keys (the query and 256 before).

    Example:
        >>> sliding_window(1, 1).dense(3, 3)[0, 0].int()
        tensor([[1, 1, 0],
                [1, 1, 1],
                [0, 1, 1]], dtype=torch.int32)
    """
    _check_int(left=left, right=right)
    return _Band(-right, left, f"sliding_window({left}, {right})")


class _KeyPrefix(Mask):
    """Keys ``kv_idx < n``, for every query."""

    def __init__(self, n: int):
        super().__init__(lambda b, h, q_idx, kv_idx: kv_idx < n, f"key_prefix({n})")
        self.n = n

    def tile_bounds(self, order):
        k_lo, k_hi, k_ok = _tile_ranges(order.k_index, order.k_tile)
        if k_lo is None:
            return None
        q_ok = (order.q_index.view(-1, order.q_tile) >= 0).all(1)
        nq = q_ok.numel()
        empty = (k_lo >= self.n)[None, :].expand(nq, -1)
        full = ((k_hi < self.n) & k_ok)[None, :] & q_ok[:, None]
        return _states(empty, full)


def prefix_lm(n: int) -> Mask:
    """Prefix-LM: the first ``n`` tokens are seen by every query, the rest causally.

    Example:
        >>> prefix_lm(2).dense(3, 3)[0, 0].int()
        tensor([[1, 1, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    _check_int(n=n)
    m = _KeyPrefix(n) | causal
    m.name = f"prefix_lm({n})"
    return m


def _ids(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() not in (1, 2) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor [tokens] or [batch, tokens], got dtype={x.dtype} shape={tuple(x.shape)}")
    return x


def _lookup(x: Tensor, b: Tensor, idx: Tensor) -> Tensor:
    return x[b, idx] if x.dim() == 2 else x[idx]


class _TokenLabels(Mask):
    """A mask defined by per-token labels; checks the lengths it is used with."""

    def __init__(self, fn, name, lq: int, lk: int, batched: bool):
        super().__init__(fn, name, batched=batched)
        self.lq, self.lk = lq, lk

    def check_lengths(self, lq, lk):
        if (lq, lk) != (self.lq, self.lk):
            raise ValueError(f"{self.name} was built for {self.lq} queries and {self.lk} keys, got lq={lq}, lk={lk}")


def segments(ids, kv_ids=None) -> Mask:
    """Document masking: a query sees keys with the same segment id.

    Args:
        ids: integer ids ``[tokens]`` or ``[batch, tokens]`` of the queries.
        kv_ids: ids of the keys, if they differ from the queries' (cross attention).

    Combine with ``causal`` for packed causal LM training: ``segments(ids) & causal``.
    """
    q_ids = _ids(ids, "ids")
    k_ids = q_ids if kv_ids is None else _ids(kv_ids, "kv_ids")
    if (q_ids.dim() == 2) != (k_ids.dim() == 2):
        raise ValueError(f"ids and kv_ids must both be [tokens] or both [batch, tokens], got {tuple(q_ids.shape)} and {tuple(k_ids.shape)}")

    def fn(b, h, q_idx, kv_idx):
        return _lookup(q_ids, b, q_idx) == _lookup(k_ids, b, kv_idx)

    return _TokenLabels(fn, f"segments({len(torch.unique(q_ids))} ids)", q_ids.shape[-1], k_ids.shape[-1], q_ids.dim() == 2)


@_cites("29")
def modality_mutual(image, question) -> Mask:
    """Paper 29 (AKI) modality-mutual attention: causal, plus image rows see question columns.

    Image tokens may attend to question tokens even when those come later; answer tokens
    (neither image nor question) stay strictly causal, so nothing leaks from the answer.

    Args:
        image: bool ``[tokens]`` or ``[batch, tokens]``, True at image tokens.
        question: bool of the same shape, True at question tokens.
    """
    img = torch.as_tensor(image, dtype=torch.bool)
    qst = torch.as_tensor(question, dtype=torch.bool)
    if img.shape != qst.shape or img.dim() not in (1, 2):
        raise ValueError(
            f"image and question must be bool [tokens] or [batch, tokens] of one shape, got {tuple(img.shape)} and {tuple(qst.shape)}"
        )
    if bool((img & qst).any()):
        raise ValueError("a token cannot be both image and question: image & question must be all False")

    def fn(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) | (_lookup(img, b, q_idx) & _lookup(qst, b, kv_idx))

    n = img.shape[-1]
    return _TokenLabels(fn, "modality_mutual", n, n, img.dim() == 2)


@_cites("16")
def isolation(groups) -> Mask:
    """Paper 16 (IR-Diffusion) isolation attention: subject ``i`` sees only subject ``i`` and background.

    Args:
        groups: integer ``[tokens]`` or ``[batch, tokens]``; 0 is background (seen by and seeing
            everyone), ``i > 0`` a subject. Tokens of different subjects never attend each other.
    """
    g = _ids(groups, "groups")

    def fn(b, h, q_idx, kv_idx):
        gq, gk = _lookup(g, b, q_idx), _lookup(g, b, kv_idx)
        return (gq == gk) | (gq == 0) | (gk == 0)

    n = g.shape[-1]
    return _TokenLabels(fn, "isolation", n, n, g.dim() == 2)


# --- masks over an N-d grid of tokens ---------------------------------------------------------


class _Grid(Mask):
    """A product over axes of 1-D rules on an N-d token grid.

    Subclasses define ``_axis(a, qc, kc) -> bool`` (the 1-D rule of axis ``a`` on coordinates),
    ``_axis_order(a) -> LongTensor`` (a permutation of that axis's coordinates that makes
    allowed pairs contiguous) and ``_box(target) -> tuple`` (the tile's extent along each axis
    in that order).
    """

    def __init__(self, shape: Sequence[int], name: str):
        self.shape = tuple(int(s) for s in shape)
        strides = [math.prod(self.shape[a + 1 :]) for a in range(len(self.shape))]

        def fn(b, h, q_idx, kv_idx):
            ok = None
            for a, (n, s) in enumerate(zip(self.shape, strides)):
                r = self._axis(a, (q_idx // s) % n, (kv_idx // s) % n)
                ok = r if ok is None else ok & r
            return ok

        super().__init__(fn, name)

    def check_lengths(self, lq, lk):
        n = math.prod(self.shape)
        if lq != n or lk != n:
            raise ValueError(
                f"{self.name} covers a grid of {n} tokens {self.shape}, got lq={lq}, lk={lk}: flatten the grid row-major into the length axis"
            )

    def _box(self, target: int) -> tuple[int, ...]:
        side = max(1, 2 ** round(math.log2(target) / len(self.shape)))
        return tuple(min(side, n) for n in self.shape)

    def _padded_axis(self, a: int, box: tuple[int, ...]) -> Tensor:
        order = self._axis_order(a)
        return torch.cat([order, order.new_full((-self.shape[a] % box[a],), -1)])

    def token_order(self, lq, lk, tile):
        if lq != lk or lq != math.prod(self.shape):
            return None
        box = self._box(tile)
        axes = [self._padded_axis(a, box) for a in range(len(self.shape))]
        # Flattened original index of every padded grid slot; -1 wherever any axis is padding.
        idx = torch.zeros((), dtype=torch.long)
        bad = torch.zeros((), dtype=torch.bool)
        for a, coords in enumerate(axes):
            c = coords.view([-1 if i == a else 1 for i in range(len(axes))])
            idx = idx * self.shape[a] + c.clamp(min=0)
            bad = bad | (c < 0)
        idx = torch.where(bad, -1, idx)  # [m0, m1, ...] the padded, permuted grid
        # Tile-major: [m0/s0, s0, m1/s1, s1, ...] -> [m0/s0, m1/s1, ..., s0, s1, ...]
        nd = len(axes)
        split = [d for coords, s in zip(axes, box) for d in (coords.numel() // s, s)]
        idx = idx.reshape(split).permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)).reshape(-1)
        t = math.prod(box)
        return Order(idx, idx, t, t, source=self, box=box)

    def tile_bounds(self, order):
        if order.source is not self:
            return None
        per_axis = []
        for a, s in enumerate(order.box):
            c = self._padded_axis(a, order.box)
            real = c >= 0
            m = self._axis(a, c[:, None].clamp(min=0), c[None, :].clamp(min=0)) & real[:, None] & real[None, :]
            t = c.numel() // s
            m = m.view(t, s, t, s)
            per_axis.append(_states(~m.any(3).any(1), m.all(3).all(1)))  # [t, t]
        # A product mask's tile is FULL iff full on every axis, EMPTY iff empty on some axis.
        out = per_axis[0]
        for st in per_axis[1:]:
            out = torch.minimum(out[:, None, :, None], st[None, :, None, :]).reshape(out.shape[0] * st.shape[0], -1)
        return out


def _tuple(x, nd: int, name: str) -> tuple:
    t = tuple(x) if isinstance(x, (tuple, list)) else (x,) * nd
    if len(t) != nd:
        raise ValueError(f"{name} has {len(t)} entries but the grid has {nd} axes: give one value or one per axis")
    return t


def _check_int(**kw) -> None:
    for k, v in kw.items():
        vals = v if isinstance(v, tuple) else (v,)
        for x in vals:
            if isinstance(x, bool) or not isinstance(x, int):
                raise TypeError(f"{k} must be an integer (or one per axis), got {k}={v!r}")
            if x < 0:
                raise ValueError(f"{k} must be >= 0, got {k}={v!r}")


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
    if not 1 <= len(shape) <= 3 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ValueError(f"shape must be 1 to 3 positive integers (the token grid), got shape={shape!r}")
    return tuple(int(s) for s in shape)


def _dilation_order(n: int, d: int) -> Tensor:
    """Coordinates sorted by dilation group (c % d), then position: groups become contiguous."""
    c = torch.arange(n)
    return c[torch.argsort((c % d) * n + c // d)]


class _Neighborhood(_Grid):
    def __init__(self, kernel, dilation, is_causal, shape):
        self.kernel, self.dilation, self.causal_axes = kernel, dilation, is_causal
        k = kernel if len(set(kernel)) > 1 else kernel[0]
        d = dilation if len(set(dilation)) > 1 else dilation[0]
        name = f"neighborhood({k}, dilation={d}, is_causal={is_causal if len(set(is_causal)) > 1 else is_causal[0]}, shape={shape})"
        super().__init__(shape, name)

    def _axis(self, a, qc, kc):
        n, k, d = self.shape[a], self.kernel[a], self.dilation[a]
        g = qc % d
        iq, ik = qc // d, kc // d
        if self.causal_axes[a]:
            ok = (ik <= iq) & (ik > iq - k)
        else:
            group_len = (n - g + d - 1) // d  # tokens in this query's dilation group
            start = torch.minimum((iq - k // 2).clamp(min=0), group_len - k)
            ok = (ik >= start) & (ik < start + k)
        return ok & (kc % d == g)

    def _axis_order(self, a):
        return _dilation_order(self.shape[a], self.dilation[a])


@_cites("42")
def neighborhood(kernel_size, dilation=1, is_causal=False, *, shape) -> Mask:
    """Paper 42: neighborhood attention on a 1-D, 2-D or 3-D token grid.

    Each query attends to the ``kernel_size`` nearest keys per axis in its dilation group
    (tokens whose coordinate has the same remainder mod ``dilation``). The window is centred on
    the query and clamped at the borders, so every query sees exactly ``kernel_size**ndim`` keys.
    Along a causal axis the window is the query and the ``kernel_size - 1`` keys before it.

    Args:
        kernel_size: int or one per axis; ``kernel_size * dilation`` must not exceed the axis.
        dilation: int or one per axis.
        is_causal: bool or one per axis.
        shape: the token grid, e.g. ``(H, W)``; tokens are flattened row-major.

    Example:
        >>> m = neighborhood(3, shape=(5,))
        >>> m.dense(5, 5)[0, 0].int()
        tensor([[1, 1, 1, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1],
                [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    shape = _check_shape(shape)
    nd = len(shape)
    kernel = _tuple(kernel_size, nd, "kernel_size")
    dil = _tuple(dilation, nd, "dilation")
    caus = _tuple(is_causal, nd, "is_causal")
    _check_int(kernel_size=kernel, dilation=dil)
    for a, (n, k, d) in enumerate(zip(shape, kernel, dil)):
        if k < 1 or d < 1:
            raise ValueError(f"kernel_size and dilation must be >= 1, got kernel_size={kernel_size!r}, dilation={dilation!r}")
        if k * d > n:
            raise ValueError(
                f"kernel_size * dilation must not exceed the axis length: axis {a} has {n} tokens, got kernel_size={k}, dilation={d}"
            )
    return _Neighborhood(kernel, dil, tuple(bool(c) for c in caus), shape)


class _Halo(_Grid):
    def __init__(self, block, halo, shape):
        self.block, self.halo = block, halo
        super().__init__(shape, f"blocks_with_halo({block}, {halo}, shape={shape})")

    def _axis(self, a, qc, kc):
        b, h = self.block[a], self.halo[a]
        lo = (qc // b) * b - h
        return (kc >= lo) & (kc < lo + b + 2 * h)

    def _axis_order(self, a):
        return torch.arange(self.shape[a])

    def _box(self, target):
        return self.block


@_cites("20")
def blocks_with_halo(block, halo, *, shape) -> Mask:
    """Paper 20 (HaloNet): queries in a ``block`` tile see keys of their block plus ``halo`` around it.

    The key window of a block extends ``halo`` tokens beyond the block on each side, cut at the
    borders of the grid (HaloNet pads with zeros there instead; the mechanism handles that).
    """
    shape = _check_shape(shape)
    nd = len(shape)
    block = _tuple(block, nd, "block")
    halo = _tuple(halo, nd, "halo")
    _check_int(block=block, halo=halo)
    for a, (n, b) in enumerate(zip(shape, block)):
        if b < 1 or n % b:
            raise ValueError(f"block must be >= 1 and divide the axis: axis {a} has {n} tokens, got block={b}")
    return _Halo(block, halo, shape)


class _Strided(_Grid):
    def __init__(self, interval, shape):
        self.interval = interval
        super().__init__(shape, f"strided_groups({interval}, shape={shape})")

    def _axis(self, a, qc, kc):
        i = self.interval[a]
        return qc % i == kc % i

    def _axis_order(self, a):
        return _dilation_order(self.shape[a], self.interval[a])

    def _box(self, target):
        # One box per group along every axis when the groups are even, else a near-cubic box.
        if all(n % i == 0 for n, i in zip(self.shape, self.interval)):
            return tuple(n // i for n, i in zip(self.shape, self.interval))
        return super()._box(target)


@_cites("70")
def strided_groups(interval, *, shape) -> Mask:
    """Paper 70 (CrossFormer LDA): tokens sampled every ``interval`` per axis form a group.

    Token at coordinates ``c`` sees the keys with the same ``c % interval`` on every axis.
    """
    shape = _check_shape(shape)
    interval = _tuple(interval, len(shape), "interval")
    _check_int(interval=interval)
    for a, (n, i) in enumerate(zip(shape, interval)):
        if not 1 <= i <= n:
            raise ValueError(f"interval must be between 1 and the axis length: axis {a} has {n} tokens, got interval={i}")
    return _Strided(interval, shape)
