"""Paper 53 (SSA): memory of one subsampled attention layer's forward + backward, by keys kept.

Measures the bytes autograd saves for the backward pass (``saved_tensors_hooks``) in one
``mha`` layer (C=256, H=4, causal) at T=2048, block 64, for ratio 1 (every key, the same code
path) and 2, 4, 8, and writes bench/results/ssa_memory.md. Run: ``python bench/ssa_memory.py``.
"""

from pathlib import Path

import torch

from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.train.ssa import SubsampledAttention


def saved_bytes(layer, x) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    return total


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T, C = 2048, 256
    x = torch.randn(1, T, C, requires_grad=True)
    rows = []
    for ratio in (1, 2, 4, 8):
        layer = SubsampledAttention(MultiHeadAttention(C, 4, is_causal=True), ratio=ratio, block=64).train()
        rows.append((ratio, saved_bytes(layer, x) / 2**20))
    base = rows[0][1]
    lines = ["| ratio | keys kept | saved for backward (MiB) | vs ratio 1 |", "|---|---|---|---|"]
    lines += [f"| {r} | {-(-T // r)} | {mib:.1f} | {base / mib:.2f}× less |" for r, mib in rows]
    text = f"SSA memory, one causal mha layer, T={T}, C={C}, H=4, block 64, float32, CPU\n\n" + "\n".join(lines) + "\n"
    Path("bench/results/ssa_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
