"""Tiny models for the circuits tests: HF architectures from configs and TinyTransformer, in float64."""

import torch

import attnlab
from attnlab.circuits.pairs import induction_pairs
from attnlab.models.tiny import TinyTransformer
from tests.conftest import tiny_causal_lm

VOCAB = 50


def model(family: str, layers: int = 2, **overrides):
    """A float64 eval model, instrumented: ``tiny`` / ``tiny_attn_only`` (TinyTransformer, 4 heads) or an HF family (2 layers)."""
    if family.startswith("tiny"):
        torch.manual_seed(0)
        m = TinyTransformer(VOCAB, dim=16, heads=4, layers=layers, mlp=family != "tiny_attn_only", **overrides)
    else:
        m = tiny_causal_lm(family, **overrides)
    m = m.double().eval()
    attnlab.hook_points(m)
    return m


def pairs(n: int = 5, length: int = 6, seed: int = 0):
    return induction_pairs(n, length=length, vocab_size=VOCAB, seed=seed)
