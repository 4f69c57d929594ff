"""Paper 50 (tensor attention): on Match3, one layer of tensor attention ≫ softmax attention of equal width; the fast approximation's error.

Claim (PAPERS.md row 50, after Sanford, Hsu & Telgarsky and Alman & Song): Match3 (label position
``i`` positive iff some ``x_i + x_j + x_k ≡ 0 mod M``) is solved by one layer of third-order
(tensor) attention at small width, while softmax attention of equal width is not; the polynomial
method approximates tensor attention in O(T) with an error that falls as the degree rises.

Setup, sized to about 15 minutes on 2 cores (two 1-thread runs at a time): attnlab's ``match3``
task (balanced labels, every position labelled, an encoder) at ``seq_len`` 8 (so ``M`` = 52,
vocabulary 54); a 1-layer TinyTransformer (dim 32, 2 heads, MLP, learned positions) with ``mha``
(softmax), ``tensor`` (exact, ``softmax(⟨q_i, k1_j∘k2_l⟩/d)(v1_j∘v2_l)``) or ``tensor_fast``
(Taylor degree 2, feature_dim 8, the factored O(T) form) as its mechanism; ``attnlab.train.sweep``
trains all three on the same batches (AdamW, lr 3e-3, batch 64, 40,000 steps of warmup + cosine,
2 seeds, two 1-thread runs side by side) and reports the final per-position test accuracy (chance 0.5),
mean ± 95% CI. The paper's scale (n up to 64, widths swept) is far beyond this budget. Pilots
(1 seed, 1,500 steps): at ``seq_len`` 16 (M = 196) all three stayed at 0.55 (mha 0.551, tensor
0.552, tensor_fast 0.551), so the run uses ``seq_len`` 8 (pilot there: mha 0.716, tensor 0.726,
tensor_fast 0.659, still rising at 1,500 steps). Budgets run (criterion unchanged): at 2,000
steps every mechanism stayed below 0.75; at 10,000 mha 0.733, tensor 0.804, tensor_fast 0.752
(221 s); at 40,000 (859 s) both tensor forms solve the task and mha stays on its plateau.

Approximation error: for unit-normal ``q, k1, k2, v1, v2`` (``B=2, H=1, T=16, d=8``, scale
``1/d``, and the same with inputs scaled by 2, which multiplies the scores by 8), the relative
error ``‖tensor_fast − tensor‖ / ‖tensor‖`` (Frobenius) at degrees 2, 4, 6 (``d^P`` features: degree 8 would need 8^8), in float64; and
the forward time of the fast and the exact forms at T = 64, 128, 256 (1 thread).

Verdict (set before running): supported if (a) ``tensor``'s mean accuracy exceeds ``mha``'s by
at least 0.15, (b) ``tensor_fast``'s exceeds ``mha``'s by at least 0.15, and (c) at input scale 1
the relative error falls at every degree step and is below 1% at degree 4. Each part is reported.

Usage: python bench/repro/match3_tensor.py [--steps 40000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from common import bar_chart, save

from attnlab.mechanisms.tensor import tensor_attention
from attnlab.mechanisms.tensor_fast import tensor_fast
from attnlab.train import sweep

TASK = {"seq_len": 8}
MODEL = {"dim": 32, "heads": 2, "layers": 1}
MECHANISMS = ("mha", "tensor", "tensor_fast")
DEGREES = (2, 4, 6)
GAP = 0.15


def approximation_error(input_scale: float, degrees=DEGREES, shape=(2, 1, 16, 8)) -> list[float]:
    """Relative Frobenius error of the degree-P fast form against exact tensor attention, float64."""
    g = torch.Generator().manual_seed(0)
    q, k1, k2, v1, v2 = (input_scale * torch.randn(5, *shape, generator=g, dtype=torch.float64)).unbind(0)  # [B, H, T, d] each
    scale = 1.0 / shape[-1]
    exact = tensor_attention(q, k1, k2, v1, v2, scale=scale, backend="reference")  # [B, H, T, d]
    return [float((tensor_fast(q, k1, k2, v1, v2, scale=scale, degree=p) - exact).norm() / exact.norm()) for p in degrees]


def forward_times(lengths=(64, 128, 256), d: int = 8, repeat: int = 3) -> list[dict]:
    """Forward seconds of the fast (degree 2) and exact forms, one head, batch 1, float32."""
    out = []
    for T in lengths:
        q, k1, k2, v1, v2 = torch.randn(5, 1, 1, T, d).unbind(0)
        row = {"T": T}
        for name, fn, kw in (("fast", tensor_fast, {"scale": 1 / d}), ("exact", tensor_attention, {})):
            fn(q, k1, k2, v1, v2, **kw)
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn(q, k1, k2, v1, v2, **kw)
            row[f"{name} ms"] = round(1e3 * (time.perf_counter() - t0) / repeat, 2)
        out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 steps, 1 seed (a smoke run)")
    ap.add_argument("--steps", type=int, default=40000, help="training steps per run (default 40,000)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds, steps = (1, 200) if args.quick else (2, args.steps)
    train_options = {"steps": steps, "batch_size": 64, "lr": 3e-3, "eval_every": 250, "eval_batches": 4}
    errors = {s: approximation_error(s) for s in (1.0, 2.0)}
    times = forward_times()
    print("relative error by degree", DEGREES, errors, "\nforward times", times, flush=True)
    t0 = time.perf_counter()
    r = sweep("match3", TASK, list(MECHANISMS), seeds, MODEL, train_options, workers=2, threads=1)
    wall = time.perf_counter() - t0
    print(r.table(), flush=True)
    summary = {s["mechanism"]: s for s in r.summary}
    acc = {m: summary[m]["final_metric"]["mean"] for m in MECHANISMS}
    half = {m: (summary[m]["final_metric"]["high"] - summary[m]["final_metric"]["low"]) / 2 for m in MECHANISMS}
    rows = [
        {
            "mechanism": m,
            "params": summary[m]["parameters"],
            "accuracy": summary[m]["final_metric"]["text"],
            "95% CI": f"[{summary[m]['final_metric']['low']:.3f}, {summary[m]['final_metric']['high']:.3f}]",
            "steps/s": round(summary[m]["steps_per_s"]["mean"], 2),
        }
        for m in MECHANISMS
    ]
    rows += [
        {"mechanism": f"tensor_fast error, inputs ×{s:g}", **{f"degree {p}": f"{e:.2e}" for p, e in zip(DEGREES, errs)}}
        for s, errs in errors.items()
    ]
    rows += [{"mechanism": "forward time, 1 head, d=8", **t} for t in times]
    a = acc["tensor"] - acc["mha"] >= GAP
    b = acc["tensor_fast"] - acc["mha"] >= GAP
    e1 = errors[1.0]
    c = all(x > y for x, y in itertools.pairwise(e1)) and e1[DEGREES.index(4)] < 0.01
    supported = a and b and c
    verdict = (
        ", ".join(f"{m} {acc[m]:.3f}" for m in MECHANISMS)
        + f" (mean per-position test accuracy, chance 0.5; {seeds} seeds, {steps} steps; n={TASK['seq_len']}, 1 layer, d={MODEL['dim']}). "
        + f"(a) tensor − mha = {acc['tensor'] - acc['mha']:+.3f} ({'≥' if a else '<'} {GAP}); "
        + f"(b) tensor_fast − mha = {acc['tensor_fast'] - acc['mha']:+.3f} ({'≥' if b else '<'} {GAP}); "
        + "(c) relative error of tensor_fast at degrees "
        + "/".join(map(str, DEGREES))
        + ": "
        + ", ".join(f"{x:.1e}" for x in e1)
        + f" ({'falls, < 1% at degree 4' if c else 'does not both fall and stay < 1% at degree 4'}); inputs ×2: "
        + ", ".join(f"{x:.1e}" for x in errors[2.0])
        + f". Forward at T={times[-1]['T']}: fast {times[-1]['fast ms']} ms, exact {times[-1]['exact ms']} ms. Sweep wall time {wall:.0f} s."
    )
    if max(acc.values()) < 0.9:
        verdict += " No mechanism reached 0.9 at this budget: none has learned the task, so the comparison says little."
    save(
        "match3_tensor",
        claim="On Match3, tensor attention (exact, and its fast polynomial approximation) ≫ softmax attention of equal width; "
        "the approximation's error against exact tensor attention falls with the polynomial degree.",
        paper="50",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=bar_chart(
            f"Match3 accuracy, n={TASK['seq_len']}, 1 layer, d={MODEL['dim']} ({seeds} seeds)",
            list(MECHANISMS),
            [acc[m] for m in MECHANISMS],
            [half[m] for m in MECHANISMS],
            ylabel="per-position test accuracy",
        ),
        settings={
            "task": TASK,
            "model": MODEL,
            "train": train_options,
            "seeds": seeds,
            "executor": "process, 2 workers × 1 thread",
            "error": {"shape": [2, 1, 16, 8], "degrees": list(DEGREES), "dtype": "float64"},
        },
    )


if __name__ == "__main__":
    main()
