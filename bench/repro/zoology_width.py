"""Paper 56 (Zoology, MQAR): attention solves multi-query associative recall at small width, while the gated
and long convolutions need a width that grows with the number of key-value pairs.

Setup, at a small scale that fits about an hour on 2 cores: attnlab's ``mqar`` task (Zoology's
generator, power-law query gaps a=0.01) at seq_len 32, vocab 64, for 4 and 8 pairs (Zoology: L 64–512,
vocab 8192, 4–64 pairs, widths 64–512). A TinyTransformer (2 layers, MLPs, learned positions; 2 heads at
width 16, 4 above) with each mixer as its sequence layer, at Zoology's three smallest widths, 64, 128
and 256 (``--widths``):

- ``mha``: softmax attention;
- ``based``: Taylor linear attention (feature_dim 16) plus a sliding window of 8 tokens (a quarter of L, so
  the window alone cannot reach every pair);
- ``base_conv``: BaseConv with an explicit filter as long as the sequence (kernel 32, Zoology's long-filter
  BaseConv layer; the 3-tap default cannot see past 5 tokens in 2 layers);
- ``hyena``: order-2 Hyena, implicit FFT filters with positions scaled to L (max_len 32);
- ``selective_ssm``: the Mamba-2-form selective SSM (state 16, expand 2).

Each run: ``attnlab.train`` (AdamW, lr 3e-3 × min(1, 64 / width), batch 64, 1,500 steps of warmup + cosine, stop at 99% test
accuracy), 1 seed, 1 thread, two runs at a time (one per core). A first record at 400 steps left every
mixer, ``mha`` included, on the MQAR plateau (0.17-0.28); ``mha`` leaves it near 1,000 steps in
``dsf_ordering.py``, so the recorded run takes 1,500 (``--steps``). Reported: the final test accuracy at
the query positions. One seed per point: a point is one run, not a mean. Zoology tunes the learning
rate per model; here every mixer gets the same one at a width, falling as 1 / width above 64 (wider
models want smaller rates; 3e-3 is where ``mha`` learned at width 64).

Budgets run: widths 16, 32 and 64 at 1,500 steps (2,135 s) left ``mha`` on the plateau at widths 16
and 32 (0.20–0.31; 0.99 at 64), so criterion 1 failed with attention itself unlearned: those widths
are below Zoology's range, and the recorded run uses its widths.

Verdict (set before running), with P the larger pair count and p the smaller:
1. attention solves it at small width: ``mha`` >= 0.9 at every width and both pair counts;
2. for each convolution (``base_conv`` and ``hyena``): its gap to ``mha`` at P, averaged over widths, is at
   least 0.2; that gap is larger at P than at p; and at P its accuracy at the largest width exceeds its
   accuracy at the smallest (it needs width to recall more pairs).
Supported if 1 and 2 hold. ``based`` and ``selective_ssm`` are reported, not judged.

Usage: python bench/repro/zoology_width.py [--widths 64,128,256] [--steps 1500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
from common import OUT, line_chart, save

from attnlab.train import sweep

VOCAB, SEQ_LEN = 64, 32
MIXERS = {
    "mha": {},
    "based": {"window": 8, "feature_dim": 16},
    "base_conv": {"kernel": SEQ_LEN},
    "hyena": {"max_len": SEQ_LEN},
    "selective_ssm": {},
}
CONVOLUTIONS = ("base_conv", "hyena")
LR = 3e-3  # at width 64 and below; times 64 / width above


def run_point(p: int, w: int, m: str, train_options: dict) -> dict:
    """One 1-seed, 1-thread run: ``m`` at width ``w`` on MQAR with ``p`` pairs."""
    torch.set_num_threads(1)
    model = {"dim": w, "heads": 2 if w < 32 else 4, "layers": 2, "mechanism_options": MIXERS[m]}
    train_options = {**train_options, "lr": LR * min(1.0, 64 / w)}
    r = sweep("mqar", {"vocab_size": VOCAB, "seq_len": SEQ_LEN, "pairs": p}, [m], 1, model, train_options, "serial", threads=1)
    run = r.runs[0]
    return {
        "pairs": p,
        "width": w,
        "mixer": m,
        "params": r.summary[0]["parameters"],
        "accuracy": run["final_metric"],
        "lr": train_options["lr"],
        "steps": run["steps_to_target"] or train_options["steps"],
        "wall_s": run["wall_s"],
    }


def run_grid(pairs: list[int], widths: list[int], train_options: dict, workers: int) -> list[dict]:
    """Every (pairs, width, mixer) point, ``workers`` at a time; every finished run is written to ``zoology_width_runs.json``."""
    OUT.mkdir(parents=True, exist_ok=True)
    points = [(p, w, m) for w in sorted(widths, reverse=True) for p in pairs for m in MIXERS]  # the longest runs first
    runs = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for row in pool.map(run_point, *zip(*points, strict=True), [train_options] * len(points)):
            print(row, flush=True)
            runs.append(row)
            (OUT / "zoology_width_runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 steps, widths 16 and 32 (a smoke run)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per run (default 1,500, the recorded run)")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each (default 2: one per core here)")
    ap.add_argument("--widths", default="64,128,256", help="model widths, comma-separated (default 64,128,256)")
    args = ap.parse_args()
    try:
        widths = sorted({int(w) for w in args.widths.split(",")})
    except ValueError:
        ap.error(f"--widths must be comma-separated integers, got {args.widths!r}")
    if len(widths) < 2 or widths[0] < 16 or any(w % 4 for w in widths):
        ap.error(f"--widths needs at least two widths, each >= 16 and divisible by 4, got {args.widths!r}")
    pairs, widths = [4, 8], ([16, 32] if args.quick else widths)
    steps = 20 if args.quick else args.steps
    train_options = {"steps": steps, "batch_size": 64, "target": 0.99, "eval_every": 100, "eval_batches": 2}
    t0 = time.perf_counter()
    runs = run_grid(pairs, widths, train_options, args.workers)
    wall = time.perf_counter() - t0

    acc = {(r["pairs"], r["width"], r["mixer"]): r["accuracy"] for r in runs}
    p, P = pairs[0], pairs[-1]

    def gap(m: str, n: int) -> float:
        return sum(acc[n, w, "mha"] - acc[n, w, m] for w in widths) / len(widths)

    mha_ok = min(acc[n, w, "mha"] for n in pairs for w in widths) >= 0.9
    conv_ok = {m: gap(m, P) >= 0.2 and gap(m, P) > gap(m, p) and acc[P, widths[-1], m] > acc[P, widths[0], m] for m in CONVOLUTIONS}
    supported = mha_ok and all(conv_ok.values())
    verdict = (
        f"mha min accuracy {min(acc[n, w, 'mha'] for n in pairs for w in widths):.3f} over widths {widths} and pairs {pairs} "
        f"({'>=' if mha_ok else '<'} 0.9). "
        + "; ".join(
            f"{m}: mean gap to mha {gap(m, p):.3f} at {p} pairs, {gap(m, P):.3f} at {P} pairs, at {P} pairs width "
            f"{widths[0]} {acc[P, widths[0], m]:.3f} vs width {widths[-1]} {acc[P, widths[-1], m]:.3f} ({'meets' if conv_ok[m] else 'fails'} criterion 2)"
            for m in CONVOLUTIONS
        )
        + "; reported only: "
        + ", ".join(
            f"{m} at {P} pairs " + "/".join(f"{acc[P, w, m]:.2f}" for w in widths) for m in MIXERS if m not in (*CONVOLUTIONS, "mha")
        )
        + f" (widths {'/'.join(map(str, widths))}). 1 seed, {steps} steps, L={SEQ_LEN}, vocab {VOCAB}. Wall time {wall:.0f} s, {args.workers} runs at a time, 1 thread each."
    )
    if not mha_ok:
        verdict += " Softmax attention itself stayed below 0.9 somewhere: at this budget the models have not all learned the task."
    order = {m: i for i, m in enumerate(MIXERS)}
    runs = sorted(runs, key=lambda r: (r["pairs"], r["width"], order[r["mixer"]]))
    rows = [{**r, "accuracy": round(r["accuracy"], 3), "wall_s": round(r["wall_s"], 1)} for r in runs]
    series = {f"{m}, {n} pairs": (widths, [acc[n, w, m] for w in widths]) for m in MIXERS for n in pairs}
    save(
        "zoology_width",
        claim="On MQAR, attention solves the task at small model width; the gated and long convolutions need a width "
        "that grows with the number of key-value pairs.",
        paper="56",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=line_chart(f"MQAR accuracy vs width, L={SEQ_LEN} (1 seed)", series, "model width", "test accuracy", logx=True),
        settings={
            "task": {"vocab_size": VOCAB, "seq_len": SEQ_LEN, "pairs": pairs},
            "model": {"layers": 2, "widths": widths, "heads": "2 at width 16, else 4", "mechanism_options": MIXERS},
            "train": {**train_options, "lr": f"{LR} × min(1, 64 / width)"},
            "seeds": 1,
            "executor": f"{args.workers} processes, 1 thread each",
        },
    )


if __name__ == "__main__":
    main()
