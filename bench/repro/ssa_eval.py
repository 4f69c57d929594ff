"""Paper 53 (information pathways, SSA): a model trained with stochastically subsampled attention
(each block of queries sees ⌈T / ρ⌉ locally biased keys) and evaluated with full attention is
within 1% of the model trained with full attention.

Setup, at a test size that fits a few minutes on 2 shared cores: attnlab's ``mqar`` task
(seq_len 32, vocab 64, 4 pairs); a TinyTransformer (dim 64, 4 heads, 2 layers, MLPs, ``mha``),
trained with ``attnlab.train.train`` (AdamW, lr 3e-3, batch 64, ``steps`` of warmup + cosine) as is
(baseline) or wrapped by ``attnlab.train.ssa.use_ssa`` with ρ = 2 and 4 (block 8, locality = keys
kept). All runs of a seed start from the same weights and see the same batches. Reported: the
final test accuracy with full attention (``model.eval()``), and SSA's ensemble of 4 subsampled
passes (``ensemble_predict``). The memory side of the claim is bench/ssa_memory.py.

Criterion (set before the run): SUPPORTED when, for each ρ, the mean full-attention test accuracy
of the SSA runs is at least the baseline's minus 0.01 (1% absolute).

Cost: about 4 minutes on the shared 2 cores (800 steps, 2 seeds, 6 runs).

Usage: python bench/repro/ssa_eval.py [--steps 800] [--seeds 2] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import bar_chart, fmt, save

from attnlab import tasks
from attnlab.stats import mean_ci
from attnlab.train import build_model, train
from attnlab.train.data import generator, predictions
from attnlab.train.ssa import ensemble_predict, use_ssa

TASK = {"vocab_size": 64, "seq_len": 32, "pairs": 4}
MODEL = {"dim": 64, "heads": 4, "layers": 2}
RATIOS = (2, 4)
BATCH, EVAL_BATCHES = 64, 4


def ensemble_accuracy(task, model, seed: int) -> float:
    accs = []
    for j in range(EVAL_BATCHES):
        b = task.batch(BATCH, "test", generator(seed, "test", j))
        probs = ensemble_predict(model, b.inputs, samples=4, seed=j)
        accs.append(float(task.metric(predictions(probs, b), b)))
    return sum(accs) / len(accs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="60 steps, 1 seed (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps, seeds = (60, 1) if args.quick else (args.steps, args.seeds)
    task = tasks.get("mqar", **TASK)
    opts = {"steps": steps, "batch_size": BATCH, "lr": 3e-3, "eval_every": steps, "eval_batches": EVAL_BATCHES, "progress": False}
    full: dict[str, list[float]] = {"baseline": [], **{f"SSA ρ={r}": [] for r in RATIOS}}
    ens: dict[str, list[float]] = {f"SSA ρ={r}": [] for r in RATIOS}
    t0 = time.perf_counter()
    for seed in range(seeds):
        torch.manual_seed(seed)
        init = build_model(task, "mha", MODEL).state_dict()
        for name in full:
            model = build_model(task, "mha", MODEL)
            model.load_state_dict(init)
            if name != "baseline":
                ratio = int(name.split("=")[1])
                use_ssa(model, ratio=ratio, block=8)
            r = train(task, model, seed=seed, threads=1, **opts)
            full[name].append(r.final_metric)
            if name != "baseline":
                ens[name].append(ensemble_accuracy(task, model, seed))
            print(seed, name, round(r.final_metric, 4), flush=True)
    wall = time.perf_counter() - t0
    base = mean_ci(full["baseline"]).mean
    rows = [
        {
            "training": name,
            "full-attention test accuracy": fmt(full[name]),
            "ensemble of 4 (SSA)": fmt(ens[name]) if name in ens else "",
            "vs baseline": f"{mean_ci(full[name]).mean - base:+.3f}",
        }
        for name in full
    ]
    supported = all(mean_ci(full[f"SSA ρ={r}"]).mean >= base - 0.01 for r in RATIOS)
    verdict = ", ".join(f"{n} {mean_ci(v).mean:.3f}" for n, v in full.items()) + f" (full-attention accuracy, {seeds} seeds)"
    save(
        "ssa_eval",
        claim="training with subsampled attention, evaluating with full attention, is within 1% of full-attention training",
        paper="53",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=bar_chart("mqar test accuracy, full attention at evaluation", list(full), [mean_ci(v).mean for v in full.values()]),
        settings={"task": TASK, "model": MODEL, "ratios": RATIOS, "block": 8, **opts, "seeds": seeds, "wall_s": round(wall)},
    )


if __name__ == "__main__":
    main()
