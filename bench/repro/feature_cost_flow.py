"""Paper 71 (feature + cost aggregation): attention over concatenated feature and cost tokens
estimates flow with lower error than the same attention over cost tokens alone.

Synthetic 1-D scenes with shifts: a sequence of 48 positions holds 3 objects (random boundaries),
each moving by its own integer displacement in [−4, 4]. A position's source descriptor (16
channels) is its object's appearance vector plus per-position texture (N(0, 0.5²)); the target
sequence is the source moved by each object's displacement (circularly) with N(0, 1.5²) noise. The
cost volume is the correlation of each source descriptor with the target descriptors at the 9
candidate displacements (noisy: the texture and the noise blur the true peak). Model: both inputs
projected to 16 channels, two ``FeatureCostAttention(16, 16, heads=4)`` blocks, a linear read-out of
the cost stream to 9 displacement logits; flow = softmax-weighted mean displacement, trained with
L1 on the true flow. "feature + cost" feeds the source descriptors; "cost only" feeds zeros in their
place (same model, attention driven by costs). Adam lr 2e-3, batch 64 fresh scenes, 500 steps,
3 seeds. Measured: end-point error (mean |flow − true|) on 1,024 test scenes, and the raw
winner-take-all cost's error as a floor reference.

Criterion (set before running): feature + cost has lower end-point error than cost only in every seed.

Usage: python bench/repro/feature_cost_flow.py [--quick]   (about 3 minutes on one core)
"""

from __future__ import annotations

import argparse

import torch
from common import bar_chart, fmt, save
from torch import nn

from attnlab.operators.feature_cost import FeatureCostAttention

T, OBJECTS, D, CH, WIDTH, BATCH, LR, N_TEST = 48, 3, 4, 16, 16, 64, 2e-3, 1024
DISP = torch.arange(-D, D + 1).float()  # (9,) candidate displacements


def scenes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source descriptors ``[n, T, CH]``, cost volume ``[n, T, 2D+1]``, true flow ``[n, T]``."""
    cuts = torch.rand(n, T, generator=g).argsort(-1)[:, : OBJECTS - 1].sort(-1).values  # (n, 2) boundaries
    obj = (torch.arange(T)[None, None] >= cuts[..., None]).sum(1)  # (n, T) object id per position
    look = torch.randn(n, OBJECTS, CH, generator=g)  # appearance per object
    disp = torch.randint(-D, D + 1, (n, OBJECTS), generator=g)
    src = look[torch.arange(n)[:, None], obj] + 0.5 * torch.randn(n, T, CH, generator=g)  # (n, T, CH)
    flow = disp[torch.arange(n)[:, None], obj]  # (n, T)
    tgt = torch.zeros_like(src)
    dest = (torch.arange(T)[None] + flow) % T  # (n, T) where each source position lands
    tgt[torch.arange(n)[:, None], dest] = src
    tgt = tgt + 1.5 * torch.randn(n, T, CH, generator=g)
    idx = (torch.arange(T)[:, None] + torch.arange(-D, D + 1)[None]) % T  # (T, 9)
    cost = torch.einsum("ntc,ntkc->ntk", src, tgt[:, idx]) / CH  # (n, T, 9)
    return src, cost, flow.float()


class FlowNet(nn.Module):
    def __init__(self, use_features: bool):
        super().__init__()
        self.use_features = use_features
        self.f_in, self.c_in = nn.Linear(CH, WIDTH), nn.Linear(2 * D + 1, WIDTH)
        self.blocks = nn.ModuleList([FeatureCostAttention(WIDTH, WIDTH, heads=4) for _ in range(2)])
        self.out = nn.Linear(WIDTH, 2 * D + 1)

    def forward(self, src, cost):
        f = self.f_in(src if self.use_features else torch.zeros_like(src))  # (B, T, W)
        c = self.c_in(cost)  # (B, T, W)
        for blk in self.blocks:
            f, c = blk(f, c)
        return self.out(c).softmax(-1) @ DISP  # (B, T) expected displacement


def one_seed(seed: int, steps: int) -> dict:
    test = scenes(N_TEST, torch.Generator().manual_seed(10_000 + seed))
    row = {"seed": seed, "raw cost argmax EPE": round(float((DISP[test[1].argmax(-1)] - test[2]).abs().mean()), 4)}
    for name, use in (("feature + cost", True), ("cost only", False)):
        torch.manual_seed(seed)
        m = FlowNet(use)
        opt = torch.optim.Adam(m.parameters(), lr=LR)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            src, cost, flow = scenes(BATCH, g)
            loss = (m(src, cost) - flow).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            row[f"{name} EPE"] = round(float((m(test[0], test[1]) - test[2]).abs().mean()), 4)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds, steps = ([0], 200) if args.quick else ([0, 1, 2], 500)
    rows = [one_seed(s, steps) for s in seeds]
    wins = sum(r["feature + cost EPE"] < r["cost only EPE"] for r in rows)
    supported = wins == len(rows)
    keys = ["feature + cost EPE", "cost only EPE", "raw cost argmax EPE"]
    col = {k: [r[k] for r in rows] for k in keys}
    verdict = (
        f"feature + cost has the lower end-point error in {wins}/{len(rows)} seeds: {fmt(col['feature + cost EPE'])} vs cost only "
        f"{fmt(col['cost only EPE'])} (raw winner-take-all cost {fmt(col['raw cost argmax EPE'])})"
    )
    save(
        "feature_cost_flow",
        claim="Self-attention over concatenated feature and cost tokens gives lower flow error than the same attention over "
        "cost tokens alone.",
        paper="71",
        rows=rows,
        verdict=verdict,
        supported=supported,
        figure=bar_chart(
            f"Flow end-point error on synthetic shifts ({len(rows)} seeds)", keys, [sum(col[k]) / len(rows) for k in keys], ylabel="EPE"
        ),
        settings={
            "data": f"T={T}, {OBJECTS} objects with displacements in [-{D}, {D}], descriptors {CH} ch (appearance + 0.5 texture), "
            "target noise 1.5, cost = correlation at 9 displacements",
            "model": f"Linear in → 2 × FeatureCostAttention({WIDTH}, {WIDTH}, heads=4) → linear → soft-argmin",
            "train": {"steps": steps, "batch_size": BATCH, "lr": LR, "optimizer": "Adam", "loss": "L1 on flow"},
            "seeds": seeds,
        },
    )


if __name__ == "__main__":
    main()
