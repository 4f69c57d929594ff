"""Paper 66 (Convergent learning): two seeds of a toy learn units that match one-to-one far better than chance; a permuted copy matches exactly.

Setup: two 4-layer TinyTransformers (dim 64) trained from seeds 0 and 1 on parity-of-k queries
(bench/repro/represent_toys.py), and a copy of seed 0 with its residual units permuted (the same
function: LayerNorm ignores the order of units). The residual states of every token of 300 fresh
inputs (every query) are compared stream by stream (0: embeddings, i + 1: layer i's output):
``attnlab.represent.CrossStats`` gives the unit correlation matrix, ``match_units`` the one-to-one
(Hungarian) matching and its mean correlation, ``permutation_null`` the same with one model's
rows shuffled (20 draws: what matching finds by chance).

Criterion (set before the run): SUPPORTED when, at every layer output (streams 1..4), the two
seeds' matched correlation exceeds the largest of the 20 null draws, and the permuted copy's
matched correlation is 1.0 (within 1e-6) at every stream with the permutation recovered.

Cost: two toy trainings (about a minute each on an idle core) and 5 streams × 21 matchings of
64 × 64; the run's wall time is recorded in its settings.

Usage: python bench/repro/convergent_learning.py [--steps 800] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import line_chart, save
from represent_toys import batch, residual_permuted, train_toy

from attnlab.represent import CrossStats, match_units, permutation_null, states

CLAIM = "Two seeds of a toy learn residual units that match one-to-one above a permutation null; a permuted copy is matched exactly."


def rows_of(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every token's state per stream: ``[N * T, C]``."""
    cols = [[x.reshape(-1, x.shape[-1]) for x in s] for s, _, _ in states(model, ids.tolist(), batch_size=100)]
    return [torch.cat(c) for c in zip(*cols, strict=True)]


def matched(x: torch.Tensor, y: torch.Tensor):
    s = CrossStats([(0, 1)])
    s.update([x, y])
    return match_units(s.correlation(0, 1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few training steps (the verdict means nothing)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps = 60
    torch.set_num_threads(1)
    start = time.perf_counter()
    (m0, acc0), (m1, acc1) = train_toy(0, steps=a.steps), train_toy(1, steps=a.steps)
    perm = torch.randperm(m0.dim, generator=torch.Generator().manual_seed(7))
    copy = residual_permuted(m0, perm)
    ids, _ = batch(300, torch.Generator().manual_seed(99))
    r0, r1, rc = rows_of(m0, ids), rows_of(m1, ids), rows_of(copy, ids)
    rows = []
    for layer, (x, y, z) in enumerate(zip(r0, r1, rc, strict=True)):
        seeds = matched(x, y)
        null = permutation_null(x, y, draws=20)
        same = matched(x, z)
        recovered = bool(torch.equal(perm[torch.tensor(same.pairs)], torch.arange(len(perm))))
        rows.append(
            {"stream": layer, "seeds_matched": round(seeds.mean, 4), "null_max": round(max(null), 4), "null_mean": round(sum(null) / len(null), 4),
             "copy_matched": round(same.mean, 6), "copy_recovered": recovered}
        )  # fmt: skip
    layers = [r for r in rows if r["stream"] >= 1]
    above = all(r["seeds_matched"] > r["null_max"] for r in layers)
    exact = all(abs(r["copy_matched"] - 1.0) <= 1e-6 and r["copy_recovered"] for r in rows)
    verdict = (
        f"toy accuracies {acc0:.3f}, {acc1:.3f}; seeds matched per stream {[r['seeds_matched'] for r in rows]} against null maxima "
        f"{[r['null_max'] for r in rows]}; permuted copy matched {[r['copy_matched'] for r in rows]}, permutation recovered: {exact}"
    )
    xs = [r["stream"] for r in rows]
    save(
        "convergent_learning",
        claim=CLAIM,
        paper="66",
        rows=rows,
        verdict=verdict,
        supported=above and exact,
        figure=line_chart(
            "matched unit correlation per stream (0: embeddings)",
            {
                "two seeds": (xs, [r["seeds_matched"] for r in rows]),
                "null (max of 20)": (xs, [r["null_max"] for r in rows]),
                "permuted copy": (xs, [r["copy_matched"] for r in rows]),
            },
            "stream",
            "mean matched correlation",
        ),
        settings={
            "steps": a.steps,
            "inputs": 300,
            "draws": 20,
            "accuracies": [acc0, acc1],
            "wall_s": round(time.perf_counter() - start, 1),
        },
    )


if __name__ == "__main__":
    main()
