"""Paper 56 (Zoology, MQAR): a 2-layer attention model (d=64, L=128) reaches >= 99% multi-query
associative recall, while linear attention of equal width stays far below, and the gap grows with
the number of key-value pairs.

Setup: attnlab's ``mqar`` task (Zoology's generator: keys from the lower half of the vocabulary,
values from the upper half, power-law query gaps, a=0.01) at seq_len 128 and vocab 256 (Zoology
uses up to 8192; 256 keeps the CPU budget, and 128 keys is plenty for 16 pairs), for 4 and 16
pairs. TinyTransformer (dim 64, 4 heads, 2 layers, MLPs, learned positions) with ``mha`` or
``linear`` as its sequence mechanism; ``attnlab.train.sweep`` trains both on the same batches with
the same budget (AdamW, lr 3e-3, batch 64, 1,500 steps of warmup + cosine) for 2 seeds and reports
the final test accuracy, mean ± 95% CI. Runs stop early at 99% test accuracy. (A first version
with a 1,000-step schedule caught mha on its plateau, just before the jump to 99%; 2 seeds and
2 pair counts keep the run within 15 minutes on 2 cores.)

Also measured (the issue's performance target, "MQAR with the 2-layer d=64 L=128 model reaches
99% in under 5 minutes on 2 cores; report steps/s and what limits it"): the wall time of each
``mha`` run that reached 99% (the sweep runs two 1-thread runs side by side on the 2 cores, so a
run gets one core), its training steps/s, and a short profile of one training step of the 8-pair
model: time split data / forward / backward / optimizer, and torch.profiler's top ops.

Verdict (set before running): supported if mha's mean accuracy is >= 0.99 at every pair count,
linear's is at least 0.2 lower at every pair count, and the gap at the most pairs exceeds the gap
at the fewest.

Usage: python bench/repro/mqar.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import OUT, line_chart, save

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.train import build_model, sweep
from attnlab.train.data import generator

SEQ_LEN, VOCAB, TARGET = 128, 256, 0.99
MODEL = {"dim": 64, "heads": 4, "layers": 2}
MECHANISMS = ("mha", "linear")


def run_sweeps(pairs: list[int], seeds: int, train_options: dict) -> dict:
    """One attnlab sweep (mha and linear, ``seeds`` seeds) per pair count."""
    out = {}
    for p in pairs:
        t0 = time.perf_counter()
        r = sweep("mqar", {"vocab_size": VOCAB, "seq_len": SEQ_LEN, "pairs": p}, MECHANISMS, seeds, MODEL, train_options)
        print(f"pairs={p} ({time.perf_counter() - t0:.0f} s)\n{r.table()}", flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        r.save(OUT / f"mqar_sweep_pairs{p}.json")  # every run's curves, kept even if a later sweep is cut short
        out[p] = r
    return out


def rows_of(results: dict) -> list[dict]:
    rows = []
    for p, r in results.items():
        for s in r.summary:
            f = s["final_metric"]
            runs = [x for x in r.runs if x["mechanism"] == s["mechanism"]]
            hit = [x for x in runs if x["steps_to_target"] is not None]
            rows.append(
                {
                    "pairs": p,
                    "mechanism": s["mechanism"],
                    "params": s["parameters"],
                    "accuracy": f["text"],
                    "95% CI": f"[{f['low']:.3f}, {f['high']:.3f}]",
                    "reached 99%": s["reached_target"],
                    "steps to 99%": s["steps_to_target"]["text"] if hit else "—",
                    "time to 99% s (1 core)": f"{max(x['wall_s'] for x in hit):.0f} max" if hit else "—",
                    "steps/s": round(s["steps_per_s"]["mean"], 2),
                }
            )
    return rows


def profile_step(pairs: int, batch_size: int, lr: float, steps: int = 8) -> dict:
    """Where one training step of the mha model goes: data / forward / backward / optimizer, and top ops."""
    task = tasks.get("mqar", vocab_size=VOCAB, seq_len=SEQ_LEN, pairs=pairs)
    torch.manual_seed(0)
    model = build_model(task, "mha", MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    split = dict.fromkeys(("data", "forward", "backward", "optimizer"), 0.0)

    def step(i: int, timed: bool) -> None:
        t = [time.perf_counter()]
        b = task.batch(batch_size, "train", generator(0, "train", i))
        t.append(time.perf_counter())
        where = b.targets != IGNORE
        loss = F.cross_entropy(model(b.inputs, where=where), b.targets[where])
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t.append(time.perf_counter())
        if timed:
            for k, a, z in zip(split, t, t[1:]):
                split[k] += z - a

    for i in range(2):  # warm-up
        step(i, False)
    for i in range(steps):
        step(i, True)
    total = sum(split.values())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(i, False)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    prof_total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return {
        "steps_per_s": round(steps / total, 2),
        "split": {k: f"{100 * v / total:.0f}%" for k, v in split.items()},
        "top_ops": [f"{e.key} {100 * e.self_cpu_time_total / prof_total:.0f}%" for e in ops],
        "threads": torch.get_num_threads(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 and 8 pairs, 2 seeds, fewer steps (a smoke run)")
    args = ap.parse_args()
    pairs, seeds, steps = ([4, 8], 2, 400) if args.quick else ([4, 16], 2, 1500)
    train_options = {"steps": steps, "batch_size": 64, "lr": 3e-3, "target": TARGET, "eval_every": 100, "eval_batches": 2}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the "2 cores"
    prof = profile_step(8, train_options["batch_size"], train_options["lr"])
    torch.set_num_threads(threads)
    print("profile (8 pairs, mha, 2 threads):", prof, flush=True)
    t0 = time.perf_counter()
    results = run_sweeps(pairs, seeds, train_options)
    sweep_s = time.perf_counter() - t0

    rows = rows_of(results)
    acc = {m: [next(s for s in results[p].summary if s["mechanism"] == m)["final_metric"]["mean"] for p in pairs] for m in MECHANISMS}
    gaps = [a - b for a, b in zip(acc["mha"], acc["linear"])]
    mha_runs = [x for p in pairs for x in results[p].runs if x["mechanism"] == "mha"]
    reached = [x for x in mha_runs if x["steps_to_target"] is not None]
    supported = min(acc["mha"]) >= TARGET and min(gaps) >= 0.2 and gaps[-1] > gaps[0]
    verdict = (
        "; ".join(f"{p} pairs: mha {a:.3f}, linear {b:.3f} (gap {g:.3f})" for p, a, b, g in zip(pairs, acc["mha"], acc["linear"], gaps))
        + f". Time to 99% (mha, one core each): {len(reached)}/{len(mha_runs)} runs reached it, "
        + (f"in {min(x['wall_s'] for x in reached):.0f}–{max(x['wall_s'] for x in reached):.0f} s" if reached else "none")
        + f" (target < 300 s on 2 cores). Profile of the 8-pair mha step on 2 threads: {prof['steps_per_s']} steps/s, "
        + ", ".join(f"{k} {v}" for k, v in prof["split"].items())
        + "; top ops "
        + ", ".join(prof["top_ops"][:5])
        + f". Sweep wall time {sweep_s:.0f} s."
    )
    save(
        "mqar",
        claim="A 2-layer attention model (d=64, L=128) reaches >= 99% MQAR accuracy; linear attention of equal width stays "
        "far below, and the gap grows with the number of key-value pairs.",
        paper="56",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=line_chart(
            f"MQAR accuracy, L={SEQ_LEN}, d=64 ({seeds} seeds, mean)",
            {m: (pairs, acc[m]) for m in MECHANISMS},
            "key-value pairs",
            "test accuracy",
        ),
        settings={
            "task": {"vocab_size": VOCAB, "seq_len": SEQ_LEN, "pairs": pairs},
            "model": MODEL,
            "train": train_options,
            "seeds": seeds,
            "executor": "process, one 1-thread run per core",
            "profile": prof,
        },
    )


if __name__ == "__main__":
    main()
