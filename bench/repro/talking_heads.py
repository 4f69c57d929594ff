"""Paper 45 (Talking Heads): in a trained 2-layer attention-only induction model, the strongest
K-composition runs from the previous-token head (layer 0) to the induction head (layer 1), and
removing that channel breaks induction while removing another layer-0 head does not.

Setup: a TinyTransformer (mha, dim 64, 4 heads, 2 layers, attention-only, learned positions) is
trained with attnlab's trainer (600 steps, batch 64, lr 3e-3, no early stop, 3 seeds) on repeated
random tokens: ``n`` distinct random tokens, then the same ``n`` again; the loss and the metric
are next-token accuracy on the second copy (chance ``1/V``). attnlab.tasks has no such task, so it
is defined here (``RepeatedTokens``).

Measured, per seed:

- the ``patterns`` probe on test sequences names the previous-token head (layer 0, highest
  previous-token score) and the induction head (layer 1, highest induction score);
- composition (paper 45), with ``attnlab.circuits.composition``: every layer-0 head's
  ``W_OV = W_O^h W_V^h diag(γ0) P`` is split by SVD into rank-1 components ``s_i u_i v_iᵀ``;
  component ``i`` K-composes with layer-1 head ``h2`` by
  ``‖W_QK^{h2} s_i u_i v_iᵀ‖_F / (‖W_QK^{h2}‖_F ‖s_i u_i v_iᵀ‖_F)``, where
  ``W_QK = P diag(γ1) W_Q^{h2ᵀ} W_K^{h2} diag(γ1) P`` (query ``x_qᵀ W_QK x_k``; the LayerNorm gains
  γ and centring ``P`` folded in). Elhage et al.'s whole-head score (``W_OV`` for the component)
  is reported beside it;
- the same scores of the untrained weights (same seed), as the baseline for "high";
- ablations, accuracy on the test set: attnlab's ``head_mask`` (zero) on the previous-token head
  and on each other layer-0 head (a mean-ablation check on seed 0 gave the same numbers); and the
  paper's edit, removing the top component from the head's output (attnlab's ``RemoveOVComponent``
  edit: ``W_O z ← (I − u uᵀ) W_O z``, exactly ``W_OV − s u vᵀ``), against removing the same head's
  least-composing component.

Verdict thresholds (set before running): "breaks" = accuracy below 20% (chance ≈ 1%), "does not
break" = at least 80% of the unablated accuracy; the top component must link the two heads in
every seed.

Usage: python bench/repro/talking_heads.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import bar_chart, save

import attnlab
from attnlab.circuits.composition import component_scores, composition_scores, folded_weights, ov_component_edit
from attnlab.edits.head_mask import HeadMask
from attnlab.models.tiny import TinyTransformer
from attnlab.probes.patterns import Patterns
from attnlab.stats import mean_ci
from attnlab.tasks import IGNORE, Batch, Task
from attnlab.train import train
from attnlab.train.data import generator

BREAKS, KEEPS = 0.2, 0.8


class RepeatedTokens(Task):
    """``n`` distinct random tokens, then the same ``n`` again; predict the next token in the copy.

    Shapes: ``inputs, targets [B, 2n]``; targets on positions ``n .. 2n-2`` (the copy's next token).
    """

    name = "repeated_tokens"

    def __init__(self, *, vocab_size: int = 128, n: int = 32):
        if n > vocab_size:
            raise ValueError(f"need n <= vocab_size for distinct tokens, got {n=}, {vocab_size=}")
        self.vocab_size, self.n, self.seq_len = vocab_size, n, 2 * n

    def batch(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> Batch:
        first = torch.rand(n, self.vocab_size, generator=generator).argsort(-1)[:, : self.n]  # (B, n) distinct
        inputs = torch.cat([first, first], 1)  # (B, 2n)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, self.n : -1] = inputs[:, self.n + 1 :]
        return Batch(inputs, targets)


def build(task: RepeatedTokens, seed: int, heads: int) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(task.vocab_size, dim=64, heads=heads, layers=2, mlp=False, max_len=task.seq_len)


def test_batches(task: RepeatedTokens, seed: int, count: int = 4) -> list[Batch]:
    return [task.batch(64, "test", generator(seed, "ablate", j)) for j in range(count)]


@torch.no_grad()
def accuracy(model, task, batches, edits=()) -> float:
    model.eval()
    with attnlab.attach(edits=list(edits)):
        return sum(task.metric(model(b.inputs), b) for b in batches) / len(batches)


@torch.no_grad()
def head_patterns(model, batches) -> dict:
    """Previous-token scores of layer 0 and induction scores of layer 1, ``[H]`` each (patterns probe)."""
    probe = Patterns()
    model.eval()
    with attnlab.attach(probes=[probe]):
        for b in batches:
            probe.begin(b.inputs, [])
            model(b.inputs)
            probe.end()
    r = probe.result()
    return {"prev": r["layers.0.attn"]["previous_token"].float(), "induction": r["layers.1.attn"]["induction"].float()}


def composition(model: TinyTransformer) -> dict:
    """K-composition of every layer-0 OV component (and whole head) with every layer-1 head (attnlab.circuits.composition).

    Returns ``comp [H0, D, H1]`` (component scores) and ``head [H0, H1]`` (whole-head scores).
    """
    w = folded_weights(model)
    return {"comp": component_scores(w, "k")[0, :, :, 1, :], "head": composition_scores(w, "k")[0, :, 1, :]}


def one_seed(task, seed: int, steps: int, heads: int) -> dict:
    model = build(task, seed, heads)
    init = composition(model)  # the scores of untrained weights: what "high" is measured against
    t0 = time.perf_counter()
    run = train(task, model, steps=steps, batch_size=64, lr=3e-3, seed=seed, eval_every=100, progress=False)
    batches = test_batches(task, seed)
    pat = head_patterns(model, batches)
    prev, ind = int(pat["prev"].argmax()), int(pat["induction"].argmax())
    comp = composition(model)
    top = torch.unravel_index(comp["comp"].argmax(), comp["comp"].shape)
    h1, i, h2 = (int(x) for x in top)
    worst = int(comp["comp"][prev, :, ind].argmin())
    others = [h for h in range(model.heads) if h != prev]
    each = [accuracy(model, task, batches, [HeadMask(heads=f"L0H{h}")]) for h in range(model.heads)]
    acc = {"none": accuracy(model, task, batches)}
    acc["mask prev-token head"] = each[prev]
    acc["mask other L0 head (mean)"] = sum(each[h] for h in others) / len(others)
    best = int(comp["comp"][prev, :, ind].argmax())
    acc["remove top component"] = accuracy(model, task, batches, [ov_component_edit(model, f"L0H{prev}", best)])
    acc["remove weakest component"] = accuracy(model, task, batches, [ov_component_edit(model, f"L0H{prev}", worst)])
    return {
        "seed": seed,
        "steps": run.steps_done,
        "train_s": round(time.perf_counter() - t0, 1),
        "prev_head": prev,
        "prev_score": round(float(pat["prev"][prev]), 3),
        "induction_head": ind,
        "induction_score": round(float(pat["induction"][ind]), 3),
        "L0 prev-token scores": [round(x, 3) for x in pat["prev"].tolist()],
        "L1 induction scores": [round(x, 3) for x in pat["induction"].tolist()],
        "acc masking each L0 head": [round(x, 3) for x in each],
        "top_component": f"L0H{h1}[{i}] -> L1H{h2}",
        "top_score": round(float(comp["comp"][h1, i, h2]), 3),
        "top_score_at_init": round(float(init["comp"].max()), 3),
        "top_links_prev_to_induction": (h1, h2) == (prev, ind),
        "top_whole_head": "L0H{} -> L1H{}".format(*(int(x) for x in torch.unravel_index(comp["head"].argmax(), comp["head"].shape))),
        "whole_head_score": f"{float(comp['head'].max()):.3f} (init {float(init['head'].max()):.3f})",
        **{f"acc: {k}": round(v, 4) for k, v in acc.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (a smoke run)")
    ap.add_argument("--heads", type=int, default=4, help="heads per layer (default 4)")
    args = ap.parse_args()
    seeds, steps = ([0], 300) if args.quick else ([0, 1, 2], 600)
    task = RepeatedTokens(vocab_size=128, n=32)
    rows = []
    for s in seeds:
        rows.append(one_seed(task, s, steps, args.heads))
        print(rows[-1], flush=True)
    keys = [k for k in rows[0] if k.startswith("acc: ")]
    means = {k: mean_ci([r[k] for r in rows]) for k in keys}
    linked = sum(r["top_links_prev_to_induction"] for r in rows)
    base = means["acc: none"].mean
    breaks = means["acc: mask prev-token head"].mean < BREAKS and means["acc: remove top component"].mean < BREAKS
    keeps = means["acc: mask other L0 head (mean)"].mean >= KEEPS * base and means["acc: remove weakest component"].mean >= KEEPS * base
    supported = linked == len(rows) and breaks and keeps
    verdict = (
        f"top K-composition component links prev-token head -> induction head in {linked}/{len(rows)} seeds; "
        + "; ".join(f"{k[5:]} {e}" for k, e in means.items())
        + f" (chance {1 / task.vocab_size:.3f}; breaks < {BREAKS}, keeps >= {KEEPS}·unablated)"
    )
    save(
        "talking_heads",
        claim="In a trained 2-layer attention-only induction model the top K-composition score links the previous-token head "
        "(layer 0) to the induction head (layer 1); removing that component breaks induction, removing another does not.",
        paper="45",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=bar_chart(
            f"Induction accuracy under ablations ({len(rows)} seeds, 95% CI)",
            [k[5:].replace("(mean)", "").replace("component", "comp.") for k in keys],
            [e.mean for e in means.values()],
            [0.0 if e.n < 2 else (e.high - e.low) / 2 for e in means.values()],
            "accuracy on the repeated half",
        ),
        settings={
            "task": "repeated random tokens, V=128, n=32 distinct then repeated (T=64)",
            "model": f"TinyTransformer mha dim=64 heads={args.heads} layers=2 mlp=False positions=learned",
            "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "eval_every": 100, "early_stop": None},
            "seeds": seeds,
            "ablation": "head_mask mode=zero; component removal: RemoveOVComponent edit (W_O z <- (I - u u^T) W_O z) on the prev-token head",
        },
        notes="composition and the component removal now come from src (attnlab.circuits.composition, the RemoveOVComponent "
        "edit); W_OV now folds LayerNorm's centring on its input as well as the gain (before: the gain only). Previous run: "
        "top component linked the heads in 1/3 seeds; none 0.999, mask prev-token head 0.176, mask other L0 head 0.286, "
        "remove top component 0.433, remove weakest 0.999; NOT supported.",
    )


if __name__ == "__main__":
    main()
