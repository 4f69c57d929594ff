"""Paper 68 (active-dormant attention heads): a 1-layer transformer trained on Bigram-Backcopy.

Claim (PAPERS.md row 68): in a 1-layer model (attention + MLP) trained on Bigram-Backcopy,
non-trigger queries put >= 0.8 of their attention on BOS and trigger queries <= 0.2 (the head is
dormant on bigram positions, active after triggers); the BOS value vector is small next to the
other tokens' (value-state drain); with ReLU attention (``mha`` option ``attention="relu"``) the
sink disappears.

Setup: ``tasks.get("bigram_backcopy")`` (Tempest characters, 3 triggers; sequences of 64 tokens,
the paper's 256 cut for CPU time), ``TinyTransformer`` with 1 layer, 1 head, dim 64, MLP,
learned positions; attnlab's ``train`` (AdamW, lr 3e-3, warmup 10%, cosine) for the same steps
and seeds with softmax and with ReLU attention.

Measured on held-out batches, for queries at positions t >= 1 (the BOS query sees only BOS):

- BOS share: the attention weight a query puts on BOS divided by the row's total weight, pooled
  over queries of one kind (trigger / non-trigger): ``Σ w[q, 0] / Σ_q Σ_j w[q, j]``. For softmax
  every row sums to 1, so this is the mean attention on BOS (read from the site by a probe);
  ReLU attention is not seen by probes, so its weights ``ReLU(q·k/√D) / n`` are recomputed from
  the layer's own projections (and checked against the layer's output).
- self share (a diagnostic: where a non-BOS head's mass goes): the same ratio for the query's own key.
- value ratio: ``‖v_BOS‖ / median_t ‖v_t‖`` (attnlab's ``Extreme`` probe, fed by hand).

Criteria, fixed before running: softmax supports the claim when, averaged over seeds, non-trigger
BOS share >= 0.8, trigger BOS share <= 0.2 and value ratio < 0.5; ReLU removes the sink when its
non-trigger BOS share is < 0.3 (Gu et al.'s sink threshold, ``probes.Sink``'s default ε).

Usage: python bench/repro/bigram_backcopy_sink.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from common import bar_chart, save

import attnlab
from attnlab import tasks
from attnlab.models.tiny import TinyTransformer
from attnlab.probes import Extreme, SiteProbe
from attnlab.stats import mean_ci
from attnlab.train import train

FULL = {"seeds": 3, "steps": 1000, "seq_len": 64, "batch_size": 32, "eval_batches": 4}
QUICK = {"seeds": 2, "steps": 200, "seq_len": 64, "batch_size": 32, "eval_batches": 2}
MODEL = {"dim": 64, "heads": 1, "layers": 1, "mlp": True}
LR = 3e-3


class BosAndSelf(SiteProbe):
    """Every query's attention on key 0 (BOS) and on itself, ``[2, B, H, Tq]`` per site, for the last forward."""

    def observe(self, chunk, site) -> None:
        if not self.wants(site):
            return
        p = chunk.probs.detach().float()  # (B, H, Tc, Ts)
        B, H, _, Ts = p.shape
        out = self._acc.setdefault(site.name, torch.zeros(2, B, H, chunk.lk))
        if chunk.kv_start == 0:
            out[0][:, :, chunk.q_idx] = p[..., 0]  # (B, H, Tc)
        rows = ((chunk.q_idx >= chunk.kv_start) & (chunk.q_idx < chunk.kv_start + Ts)).nonzero().flatten()
        out[1][:, :, chunk.q_idx[rows]] = p[:, :, rows, chunk.q_idx[rows] - chunk.kv_start]  # (B, H, rows)

    def result(self) -> dict:
        return dict(self._acc)


def layer_inputs(model: TinyTransformer, inputs: torch.Tensor):
    """The attention layer's q, k, v ``[B, H, T, D]`` of a 1-layer model."""
    T = inputs.shape[1]
    x = model.embed(inputs) + model.pos(torch.arange(T))  # (B, T, C)
    return model.layers[0].attn.project(model.layers[0].norm1(x))


def relu_weights(model: TinyTransformer, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU attention's weight on BOS, on the query itself, and each row's total weight, all ``[B, H, T]``.

    Recomputes ``ReLU(q·k/√D) / n`` (paper 68, ``mechanisms.mha.relu_attention``) and checks that
    these weights reproduce the layer's per-head output.
    """
    attn = model.layers[0].attn
    q, k, v = layer_inputs(model, inputs)
    B, H, T, D = q.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (Tq, Tk)
    n = torch.arange(1, T + 1, dtype=q.dtype)[:, None]  # (Tq, 1) keys each query sees
    w = F.relu(q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~causal, 0.0) / n  # (B, H, Tq, Tk)
    err = float((w @ v - attn.attend_heads(q, k, v)).abs().max())
    if err > 1e-4:
        raise RuntimeError(f"recomputed ReLU attention differs from the layer's output by {err:.2g}")
    return w[..., 0], w.diagonal(dim1=-2, dim2=-1), w.sum(-1)


@torch.no_grad()
def measure(model: TinyTransformer, task, seed: int, n_batches: int, batch_size: int) -> dict:
    """BOS share of trigger and non-trigger queries, and the value ratio, on held-out batches."""
    model.eval()
    relu = model.mechanism_options.get("attention") == "relu"
    sums = {"trigger": [0.0, 0.0, 0.0], "non-trigger": [0.0, 0.0, 0.0]}  # BOS weight, self weight, total
    extreme, site = Extreme(), model.layers[0].attn.site
    dormant_rows = 0
    for j in range(n_batches):
        b = task.batch(batch_size, "test", torch.Generator().manual_seed(10_000 + 100 * seed + j))
        if relu:
            bos, own, total = relu_weights(model, b.inputs)  # (B, 1, T) each
        else:
            probe = BosAndSelf()
            with attnlab.attach(probes=[probe]):
                model(b.inputs)
            bos, own = probe.result()[site.name]  # (B, 1, T) each
            total = torch.ones_like(bos)
        kinds = {"trigger": b.extra["trigger"].clone(), "non-trigger": b.extra["bigram"].clone()}
        for kind, sel in kinds.items():
            sel[:, 0] = False  # the BOS query itself
            for i, w in enumerate((bos, own, total)):
                sums[kind][i] += float(w[:, 0][sel].sum())
        dormant_rows += int(((total[:, 0] == 0) & kinds["non-trigger"]).sum())
        for i in range(min(4, batch_size)):  # Extreme reads the first sequence of each input
            _, _, v = layer_inputs(model, b.inputs[i : i + 1])
            extreme.observe_values(v, site)
            extreme.end()
    share = {kind: b / t if t > 0 else 0.0 for kind, (b, _, t) in sums.items()}
    share_self = {f"{kind} self": o / t if t > 0 else 0.0 for kind, (_, o, t) in sums.items()}
    return {**share, **share_self, "value_ratio": extreme.result()["value_ratio"][0], "zero_rows_nontrigger": dormant_rows}


def run(kind: str, seed: int, cfg: dict) -> dict:
    task = tasks.get("bigram_backcopy", seq_len=cfg["seq_len"])
    torch.manual_seed(seed)
    options = {"attention": kind}
    model = TinyTransformer(task.vocab_size, **MODEL, mechanism_options=options, max_len=cfg["seq_len"])
    res = train(
        task,
        model,
        steps=cfg["steps"],
        batch_size=cfg["batch_size"],
        lr=LR,
        seed=seed,
        eval_every=cfg["steps"],
        eval_batches=cfg["eval_batches"],
        progress=False,
        threads=1,
    )
    return {
        "attention": kind,
        "seed": seed,
        "trigger_acc": res.final_metric,
        **measure(model, task, seed, cfg["eval_batches"], cfg["batch_size"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    cfg = QUICK if parser.parse_args().quick else FULL
    torch.set_num_threads(1)
    t0 = time.time()
    runs = []
    for kind in ("softmax", "relu"):
        for seed in range(cfg["seeds"]):
            r = run(kind, seed, cfg)
            print(f"{kind:7s} seed {seed}: trigger acc {r['trigger_acc']:.3f}, BOS share non-trigger {r['non-trigger']:.3f}, "
                  f"trigger {r['trigger']:.3f}, non-trigger on itself {r['non-trigger self']:.3f}, value ratio {r['value_ratio']:.3f}  ({time.time() - t0:.0f} s)")  # fmt: skip
            runs.append(r)

    def est(kind: str, key: str):
        return mean_ci([r[key] for r in runs if r["attention"] == kind])

    rows, labels, values, errors = [], [], [], []
    for kind in ("softmax", "relu"):
        row = {"attention": kind, "seeds": cfg["seeds"]}
        for key in ("trigger_acc", "non-trigger", "trigger", "non-trigger self", "value_ratio"):
            e = est(kind, key)
            row[key] = str(e)
        rows.append(row)
        for q in ("non-trigger", "trigger"):
            e = est(kind, q)
            labels.append(f"{kind} {q}")
            values.append(e.mean)
            errors.append(0.0 if math.isnan(e.high) else (e.high - e.low) / 2)
    rows += [{"attention": r["attention"], "seeds": f"seed {r['seed']}", **{k: round(float(r[k]), 4) for k in ("trigger_acc", "non-trigger", "trigger", "non-trigger self", "value_ratio")}} for r in runs]  # fmt: skip

    sm_non, sm_trig, sm_val = est("softmax", "non-trigger").mean, est("softmax", "trigger").mean, est("softmax", "value_ratio").mean
    relu_non = est("relu", "non-trigger").mean
    sink = sm_non >= 0.8 and sm_trig <= 0.2
    drain = sm_val < 0.5
    relu_fix = relu_non < 0.3
    verdict = (
        f"softmax: non-trigger queries put {sm_non:.3f} of their attention on BOS (claim >= 0.8: {'yes' if sm_non >= 0.8 else 'NO'}), "
        f"trigger queries {sm_trig:.3f} (claim <= 0.2: {'yes' if sm_trig <= 0.2 else 'NO'}), non-trigger queries on themselves {est('softmax', 'non-trigger self').mean:.3f}; ‖v_BOS‖ / median ‖v‖ = {sm_val:.3f} "
        f"(small, < 0.5: {'yes' if drain else 'NO'}). ReLU attention: non-trigger BOS share {relu_non:.3f} "
        f"(sink gone, < 0.3: {'yes' if relu_fix else 'NO'}), trigger {est('relu', 'trigger').mean:.3f}, value ratio "
        f"{est('relu', 'value_ratio').mean:.3f}. Trigger (copy) accuracy: softmax {est('softmax', 'trigger_acc').mean:.3f}, "
        f"relu {est('relu', 'trigger_acc').mean:.3f}. Means over {cfg['seeds']} seeds; {time.time() - t0:.0f} s."
    )
    save(
        "bigram_backcopy_sink" + ("_quick" if cfg is QUICK else ""),
        claim="A 1-layer transformer trained on Bigram-Backcopy: non-trigger queries put >= 0.8 of their attention on BOS, "
        "trigger queries <= 0.2; the BOS value vector is small; with ReLU attention the sink disappears.",
        paper="68",
        rows=rows,
        verdict=verdict,
        supported=sink and drain and relu_fix,
        figure=bar_chart("Bigram-Backcopy, 1 layer: share of attention on BOS", labels, values, errors, "BOS share"),
        settings={**cfg, "model": MODEL, "lr": LR, "task": "bigram_backcopy(text='tempest', triggers=3)"},
    )


if __name__ == "__main__":
    main()
