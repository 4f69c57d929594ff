"""Linear CKA and unit correlation, from a batch or streamed: running sums and cross-products per pair of streams.

Paper: 66 (Convergent learning) for unit correlation; linear CKA (Kornblith et al., 2019) as the
layer × layer similarity. Shapes: ``N`` rows (tokens or examples), ``C`` a stream's width.

A stream is one layer's activations seen as rows ``[n, C]`` batch after batch. :class:`CrossStats`
keeps, for each stream, the row sum ``[C]`` and, for each requested pair ``(a, b)``, the sum of
``x_a^T x_b`` ``[Ca, Cb]`` (rows shifted by the first batch's mean so that the centring loses no
digits; summed in float64 by default, a float32 batch's product taken in float32): memory grows
with the pairs and widths, never with ``N``. When every pair's sums do not fit in memory at once,
:func:`pair_groups` splits the pairs into groups that each do, one pass over the data per group.

    >>> import torch
    >>> x = torch.randn(200, 8, dtype=torch.float64)
    >>> q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    >>> round(linear_cka(x, 3 * x @ q), 12)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CrossStats", "cka_from_cov", "correlation_from_cov", "linear_cka", "pair_groups"]


def _rows(x: Tensor, what: str, keep32: bool = False) -> Tensor:
    """``x`` as float64 rows (float32 kept as is with ``keep32``: a batch's products in float32, their running sums in float64)."""
    if x.dim() != 2:
        raise ValueError(f"{what} must be rows [N, C], got shape {list(x.shape)}: flatten batch and tokens first")
    return x if keep32 and x.dtype == torch.float32 else x.to(torch.float64)


def cka_from_cov(cxy: Tensor, cxx: Tensor, cyy: Tensor) -> float:
    """Linear CKA from centred cross-products: ``‖Cxy‖²_F / (‖Cxx‖_F ‖Cyy‖_F)`` (0 when a side is constant)."""
    den = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
    return float(torch.linalg.matrix_norm(cxy) ** 2 / den) if den > 0 else 0.0


def correlation_from_cov(cxy: Tensor, cxx_diag: Tensor, cyy_diag: Tensor) -> Tensor:
    """Pearson correlation of every unit of x with every unit of y ``[Cx, Cy]``; a constant unit correlates 0."""
    sx, sy = cxx_diag.clamp_min(0).sqrt(), cyy_diag.clamp_min(0).sqrt()
    den = sx[:, None] * sy[None, :]  # (Cx, Cy)
    return torch.where(den > 0, cxy / den.where(den > 0, torch.ones_like(den)), torch.zeros_like(den))


def linear_cka(x: Tensor, y: Tensor) -> float:
    """The batch formula: linear CKA of rows ``x`` ``[N, Cx]`` and ``y`` ``[N, Cy]`` (same rows, any widths)."""
    x, y = _rows(x, "x"), _rows(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same rows: got {x.shape[0]} and {y.shape[0]}")
    x, y = x - x.mean(0), y - y.mean(0)
    return cka_from_cov(x.T @ y, x.T @ x, y.T @ y)


class CrossStats:
    """Running sums for CKA and unit correlation between streams, fed one batch of rows at a time.

    Args:
        pairs: the ``(a, b)`` stream pairs whose cross-product to keep (indices into the list given
            to :meth:`update`); a pair's CKA also needs ``(a, a)`` and ``(b, b)``, which are kept
            whether listed or not.
        dtype: the running sums' dtype: float64 (default), or float32 to halve their memory (float32
            rows then sum in float32: over ~10⁵ rows CKA moves by about 10⁻⁶).

    Example:
        >>> s = CrossStats([(0, 1)])
        >>> x = torch.randn(50, 4, dtype=torch.float64)
        >>> s.update([x[:20], 2 * x[:20]]); s.update([x[20:], 2 * x[20:]])
        >>> round(s.cka(0, 1), 12), s.n
        (1.0, 50)
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], dtype: torch.dtype = torch.float64):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"CrossStats sums in float32 or float64, got {dtype}")
        self.pairs = _closed(pairs)
        self.dtype = dtype
        self.n = 0
        self.shift: list[Tensor] = []  # [C] per stream: the first batch's mean
        self.sums: list[Tensor] = []  # [C] per stream: sum of shifted rows
        self.cross: dict[tuple[int, int], Tensor] = {}  # [Ca, Cb]: sum of shifted x_a^T x_b

    def update(self, streams: Sequence[Tensor]) -> None:
        """Add one batch: ``streams[i]`` is stream ``i``'s rows ``[n, C_i]`` (the same ``n`` rows for every stream)."""
        rows = [_rows(x, f"stream {i}", keep32=True) for i, x in enumerate(streams)]
        n = {x.shape[0] for x in rows}
        if len(n) != 1:
            raise ValueError(f"every stream of a batch must hold the same rows, got row counts {sorted(n)}")
        if not self.shift:
            self.shift = [x.double().mean(0) for x in rows]
            self.sums = [torch.zeros_like(s) for s in self.shift]
            self.cross = {(a, b): torch.zeros(rows[a].shape[1], rows[b].shape[1], dtype=self.dtype) for a, b in self.pairs}
        if len(rows) != len(self.shift) or any(x.shape[1] != s.shape[0] for x, s in zip(rows, self.shift, strict=False)):
            raise ValueError(
                f"streams changed between batches: widths {[x.shape[1] for x in rows]}, first batch {[s.shape[0] for s in self.shift]}"
            )
        rows = [x - s.to(x.dtype) for x, s in zip(rows, self.shift, strict=True)]
        if self.dtype == torch.float32:
            rows = [x.float() for x in rows]
        for i, x in enumerate(rows):
            self.sums[i] += x.double().sum(0)
        for a, b in self.pairs:
            acc = self.cross[(a, b)]  # (Ca, Cb)
            if rows[a].dtype == acc.dtype:
                acc.addmm_(rows[a].T, rows[b])  # in place: no product tensor per pair
            else:
                acc += (rows[a].T @ rows[b]).to(acc.dtype)
        self.n += n.pop()

    def cov(self, a: int, b: int) -> Tensor:
        """The centred cross-product ``Σ (x_a − mean_a)^T (x_b − mean_b)`` ``[Ca, Cb]``."""
        if self.n == 0:
            raise ValueError("no rows were added: call update with at least one batch first")
        key = (min(a, b), max(a, b))
        if key not in self.cross:
            raise ValueError(f"the pair {key} was not kept: give it in pairs= when creating CrossStats")
        c = self.cross[key].double() - torch.outer(self.sums[key[0]], self.sums[key[1]]) / self.n
        return c if a <= b else c.T

    def cka(self, a: int, b: int) -> float:
        """Linear CKA of streams ``a`` and ``b`` over every row added."""
        return cka_from_cov(self.cov(a, b), self.cov(a, a), self.cov(b, b))

    def correlation(self, a: int, b: int) -> Tensor:
        """Pearson correlation of each unit of stream ``a`` with each unit of stream ``b`` ``[Ca, Cb]``."""
        return correlation_from_cov(self.cov(a, b), self.cov(a, a).diagonal(), self.cov(b, b).diagonal())


def _closed(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``pairs`` as sorted ``(a ≤ b)`` with every ``(a, a)`` a CKA of them needs."""
    wanted = {(min(a, b), max(a, b)) for a, b in pairs}
    return sorted(wanted | {(a, a) for p in wanted for a in p})


def pair_groups(pairs: Sequence[tuple[int, int]], widths: Sequence[int], max_bytes: int, itemsize: int = 8) -> list[list[tuple[int, int]]]:
    """Split ``pairs`` into groups whose :class:`CrossStats` sums (with the ``(a, a)`` each needs) fit in ``max_bytes``.

    Groups are filled greedily in order (rows of a layer × layer grid stay together, so a row's
    diagonal terms are shared); one group per pass over the data. ``widths[i]`` is stream ``i``'s
    width; ``itemsize`` 8 for float64 sums, 4 for float32.

        >>> pair_groups([(0, 1), (0, 2), (1, 2)], [4, 4, 4], max_bytes=5 * 16 * 8)
        [[(0, 1), (0, 2)], [(1, 2)]]
    """

    def size(group):
        return sum(widths[a] * widths[b] for a, b in _closed(group)) * itemsize

    groups: list[list[tuple[int, int]]] = []
    for p in pairs:
        if groups and size([*groups[-1], p]) <= max_bytes:
            groups[-1].append(p)
        elif size([p]) <= max_bytes:
            groups.append([p])
        else:
            need = size([p])
            raise ValueError(
                f"one pair's sums take {need / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.1f} MiB allowed: allow at least that"
            )
    return groups
