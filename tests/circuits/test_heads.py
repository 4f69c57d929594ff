"""Head importance by pruning and by gradient, and attention by offset (paper 52)."""

import math

import pytest
import torch

import attnlab
from attnlab.circuits.heads import AttentionOffset, gradient_importance, pruning_importance
from attnlab.core import Site
from attnlab.models.tiny import TinyTransformer


def _model():
    torch.manual_seed(0)
    return TinyTransformer(13, dim=16, heads=4, layers=2).double().eval()


BATCHES = [torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(2)]


def test_pruning_drop_equals_the_gradient_score_when_the_score_is_linear_in_head_outputs():
    model = _model()
    w = torch.randn(9, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def score(batch):  # linear in layer 1's head outputs: attn.out = o_proj(z) + bias
        seen = {}
        with attnlab.intervene(model, {"layers.1.attn.out": lambda x, p: seen.setdefault("x", x.view_as(x))}):
            model(batch)
        return (seen["x"] * w).sum()

    pruned = pruning_importance(model, score, BATCHES[:1])  # [L, H]
    gradient = gradient_importance(model, score, BATCHES[:1])
    assert torch.allclose(pruned[1].abs(), gradient[1], atol=1e-9)


def test_gradient_score_is_the_mean_over_batches_of_abs_z_dot_grad():
    model = _model()

    def score(batch):
        return model(batch)[:, -1].log_softmax(-1)[:, 3].sum()

    reference = torch.zeros(2, 4, dtype=torch.float64)
    for batch in BATCHES:
        zs = {}
        with attnlab.intervene(model, {"layers.*.attn.z": lambda z, p, zs=zs: zs.setdefault(p, z.view_as(z))}):
            s = score(batch)
            grads = torch.autograd.grad(s, [zs[f"layers.{i}.attn.z"] for i in range(2)])
        for i, g in enumerate(grads):
            reference[i] += (g * zs[f"layers.{i}.attn.z"]).sum((0, 1, 3)).abs().detach()  # [H]
    assert torch.allclose(gradient_importance(model, score, BATCHES), (reference / 2).float(), atol=1e-6)


def test_pruning_importance_zeroes_one_head_at_a_time():
    model = _model()
    seen = []

    def score(batch):
        with attnlab.capture(model, "layers.0.attn.z") as cache:
            out = model(batch)[:, -1, 0].sum()
        seen.append((cache["layers.0.attn.z"] == 0).all(-1).all(0).all(0))  # [H] heads that are zero
        return out

    pruning_importance(model, score, BATCHES[:1])
    zeroed = torch.stack(seen[1:5])  # the passes that pruned layer 0's heads 0..3
    assert torch.equal(zeroed, torch.eye(4, dtype=torch.bool))


def _dense_profile(probs):
    """Mean weight by |q − k| over visible causal pairs, and Σ p·|q−k| / Σ p, from whole matrices ``[B, H, T, T]``."""
    B, H, T, _ = probs.shape
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    off, visible = (q - k).abs(), k <= q
    profile = torch.stack([probs[..., (off == d) & visible].mean((0, -1)) for d in range(T)], -1)  # [H, T]
    distance = (probs * off * visible).sum((0, 2, 3)) / (probs * visible).sum((0, 2, 3))
    return profile, distance


def test_offset_profile_matches_the_dense_reference_on_a_model():
    model = TinyTransformer(13, dim=16, heads=4, layers=2)
    ids = torch.randint(0, 13, (3, 11))
    probe = AttentionOffset()
    with attnlab.attach(probes=[probe]), attnlab.capture(model, "layers.1.attn.probs") as cache:
        model(ids)
    profile, distance = _dense_profile(cache["layers.1.attn.probs"].double())
    got = probe.result()["layers.1.attn"]
    assert torch.allclose(got["profile"].double(), profile, atol=1e-6)
    assert torch.allclose(got["distance"].double(), distance, atol=1e-6)


def test_grid_profile_of_uniform_attention_over_a_2x2_grid_with_a_class_token():
    probe = AttentionOffset(grid=(2, 2), prefix=1)
    q = k = torch.zeros(1, 1, 5, 4)  # uniform attention over 5 tokens: CLS + 4 patches
    attnlab.attend(q, k, torch.randn(1, 1, 5, 4), site=Site("layers.0.attn", layer=0), probes=[probe])
    r = probe.result()["layers.0.attn"]
    assert torch.allclose(r["profile"][0], torch.full((2, 2), 0.2))  # every pair has weight 1/5
    # among patch pairs: 4 at distance 0, 8 at distance 1, 4 at distance √2, all with the same weight
    assert r["distance"][0].item() == pytest.approx((8 * 1 + 4 * math.sqrt(2)) / 16, abs=1e-6)


def test_bad_offset_options_are_refused():
    with pytest.raises(ValueError, match="grid is"):
        AttentionOffset(grid=(0, 3))
    with pytest.raises(ValueError, match="prefix is"):
        AttentionOffset(prefix=-1)
