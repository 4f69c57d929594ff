"""Paper 41 (Reddy 2023, in-context classification): trained on bursty sequences, a 2-layer
attention-only network's in-context (ICL) accuracy on novel classes sits on a plateau and then
jumps abruptly (an induction head forms); with no burstiness (B = 0) no ICL appears.

Setup: task ``icl_classification`` with its defaults, the paper's data (N = 8 item-label pairs and
a query, K = 512 classes, L = 32 labels, α = 0, p_B = 1, p_C = 0, 4 exemplar tokens per class),
bursty B = 4 (3 seeds) against non-bursty B = 0 (1 seed, the control). Model: TinyTransformer,
2 layers, attention only (``mlp=False``), 1 head per layer, C = 64, learned positions. Trainer:
``attnlab.train.train`` (AdamW, warmup + cosine, lr 1e-3, no weight decay, batch 128).

What is measured: the trainer evaluates only the ``"test"`` split (the training mixture), so the
task is wrapped (``EvalOn``) to hand the held-out ``"in_context"`` split (novel classes, fresh
labels: only ICL helps) as its test split; the trainer's curve is then ICL accuracy vs step.
Chance: 1/32 over all labels; 0.5 for a net that picks one of the N/B = 2 labels of the context
("label in context" heuristic, learned without any induction head). At the end the in-weights
split is also scored.

Jump criterion (fixed before running): plateau = median ICL accuracy of the evaluations in
steps (200, 600]; the jump is the first evaluation at or above plateau + 0.3; the plateau
length is the last evaluation before the jump still within plateau + 0.05; the rise is
jump − that step (abrupt: rise ≤ half the plateau length). No jump: ICL did not emerge.

Usage: python bench/repro/icl_transition.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import fmt, line_chart, save

from attnlab import tasks
from attnlab.models.tiny import TinyTransformer
from attnlab.train import train
from attnlab.train.data import generator

JUMP, NEAR, WINDOW = 0.3, 0.05, (200, 600)
LR, BATCH, EVAL_EVERY = 1e-3, 128, 100


class EvalOn(tasks.Task):
    """``task`` whose ``"test"`` split is ``split``: the trainer's test curve becomes that split's metric."""

    def __init__(self, task: tasks.Task, split: str):
        self.task, self.split = task, split
        self.vocab_size, self.seq_len, self.name = task.vocab_size, task.seq_len, f"{task.name}[{split}]"

    def batch(self, n, split="train", generator=None):
        return self.task.batch(n, self.split if split == "test" else split, generator)

    def metric(self, logits, batch):
        return self.task.metric(logits, batch)


def run(burstiness: int, seed: int, steps: int) -> dict:
    task = tasks.get("icl_classification", burstiness=burstiness)
    torch.manual_seed(seed)
    model = TinyTransformer(task.vocab_size, dim=64, heads=1, layers=2, mlp=False, max_len=task.seq_len)
    r = train(
        EvalOn(task, "in_context"), model, steps=steps, batch_size=BATCH, lr=LR, weight_decay=0.0,
        seed=seed, eval_every=EVAL_EVERY, eval_batches=4, progress=False, threads=1,
    )  # fmt: skip
    with torch.no_grad():
        b = task.batch(512, "in_weights", generator(seed, "in_weights", 0))
        in_weights = task.metric(model(b.inputs), b)
    return {"B": burstiness, "seed": seed, "steps": r.steps, "icl": r.test_metric, "train_loss": r.train_loss, "in_weights": in_weights}


def transition(steps: list[int], acc: list[float]) -> dict:
    """Plateau level, jump step, plateau length and rise width (None when there is no jump)."""
    level = statistics.median(a for s, a in zip(steps, acc) if WINDOW[0] < s <= WINDOW[1])
    jump = next((s for s, a in zip(steps, acc) if s > WINDOW[1] and a >= level + JUMP), None)
    if jump is None:
        return {"plateau": level, "jump": None, "length": None, "rise": None}
    before = [s for s, a in zip(steps, acc) if s < jump and a <= level + NEAR]
    length = before[-1] if before else 0
    return {"plateau": level, "jump": jump, "length": length, "rise": jump - length}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer steps and seeds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps, bursty_seeds = (800, 1) if args.quick else (3000, 3)
    t0 = time.perf_counter()
    runs = [run(4, s, steps) for s in range(bursty_seeds)] + [run(0, 0, steps)]
    wall = time.perf_counter() - t0

    rows, series = [], {}
    for r in runs:
        t = transition(r["steps"], r["icl"])
        r.update(t)
        final = statistics.mean(r["icl"][-3:])  # last three evaluations
        r["final"] = final
        rows.append(
            {
                "B": r["B"],
                "seed": r["seed"],
                "plateau ICL acc": round(t["plateau"], 3),
                "jump step": t["jump"] or "none",
                "plateau length": t["length"] if t["jump"] else "—",
                "rise (steps)": t["rise"] if t["jump"] else "—",
                "final ICL acc": round(final, 3),
                "final in-weights acc": round(r["in_weights"], 3),
                "final train loss": round(r["train_loss"][-1], 4),
            }
        )
        series[f"B={r['B']} seed {r['seed']}"] = (r["steps"], r["icl"])

    bursty, control = [r for r in runs if r["B"] > 0], [r for r in runs if r["B"] == 0]
    jumped = [r for r in bursty if r["jump"] is not None]
    abrupt = [r for r in jumped if r["rise"] <= r["length"] / 2]
    no_icl_control = all(r["jump"] is None and r["final"] < r["plateau"] + JUMP for r in control)
    gap = statistics.mean(r["final"] for r in bursty) - statistics.mean(r["final"] for r in control)
    supported = len(abrupt) == len(bursty) and no_icl_control
    verdict = (
        f"bursty B=4: {len(jumped)}/{len(bursty)} seeds jumped (plateau + {JUMP}), {len(abrupt)} abruptly; "
        f"jump steps {[r['jump'] for r in bursty]}; final ICL accuracy {fmt([r['final'] for r in bursty])} "
        f"(plateau {fmt([r['plateau'] for r in bursty])}); non-bursty B=0: final ICL accuracy "
        f"{fmt([r['final'] for r in control])}, jump {[r['jump'] for r in control]}; bursty − non-bursty {gap:+.3f}. "
        f"Chance is 1/32 = 0.031 over labels and 0.5 for picking one of the 2 labels in the context. "
        f"In-weights accuracy: B=4 {fmt([r['in_weights'] for r in bursty])}, B=0 {fmt([r['in_weights'] for r in control])}. "
        f"{len(runs)} runs of {steps} steps in {wall:.0f} s."
    )
    save(
        "icl_transition",
        claim=(
            "Trained on bursty sequences (B=4), a 2-layer attention-only net's in-context accuracy on novel classes jumps "
            "abruptly after a plateau; with B=0 there is no in-context learning."
        ),
        paper="41",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=line_chart("ICL accuracy on novel classes (in_context split)", series, "step", "ICL accuracy"),
        settings={
            "task": "icl_classification defaults (N=8, K=512, L=32, zipf=0, p_bursty=1, p_icl=0, exemplars=4)",
            "burstiness": {"bursty": 4, "control": 0},
            "model": "TinyTransformer(dim=64, heads=1, layers=2, mlp=False, positions='learned')",
            "train": {"steps": steps, "batch_size": BATCH, "lr": LR, "weight_decay": 0.0, "eval_every": EVAL_EVERY},
            "seeds": {"bursty": list(range(bursty_seeds)), "control": [0]},
            "jump": f"plateau = median ICL acc over steps {WINDOW}; jump = first eval ≥ plateau + {JUMP}",
            "quick": args.quick,
            "wall_s": round(wall, 1),
        },
    )


if __name__ == "__main__":
    main()
