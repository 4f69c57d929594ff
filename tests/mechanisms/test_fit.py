"""Paper 11: FIT, checked against a per-group re-computation and by gradients across groups."""

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab import mechanisms
from attnlab.core.site import Probe
from attnlab.mechanisms.fit import FIT


def _attn(a, x, ctx, allowed):
    """Multi-head attention written out, with a [Tq, Tk] bool matrix of allowed pairs."""
    H = a.heads
    C = x.shape[-1]
    D = C // H
    q = x @ a.q_proj.weight.T
    k, v = (ctx @ a.kv_proj.weight.T).split(C, dim=-1)
    heads = []
    for h in range(H):
        s = slice(h * D, (h + 1) * D)
        logits = q[..., s] @ k[..., s].transpose(-1, -2) / D**0.5
        heads.append(torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ v[..., s])
    return torch.cat(heads, -1) @ a.o_proj.weight.T


def _ln(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias)


def _layer(layer, x, allowed):
    h = _ln(layer.norm1, x)
    x = x + _attn(layer.attn, h, h, allowed)
    return x + layer.mlp(_ln(layer.norm2, x))


def _reference(m: FIT, x):
    """A FIT block from group-id comparisons: no masks module, explicit softmax."""
    B, T, C = x.shape
    G, K = m.groups, m.latents_per_group
    tok = torch.tensor([t * G // T for t in range(T)])
    lat = torch.tensor([j // K for j in range(G * K)])
    for layer in m.local:
        x = _layer(layer, x, tok[:, None] == tok[None, :])
    if not len(m.globals):
        return x
    z = m.latents.reshape(G * K, C).expand(B, -1, -1)
    z = z + _attn(m.read.attn, _ln(m.read.norm_x, z), _ln(m.read.norm_context, x), lat[:, None] == tok[None, :])
    for layer in m.globals:
        z = _layer(layer, z, torch.ones(G * K, G * K, dtype=torch.bool))
    return x + _attn(m.write.attn, _ln(m.write.norm_x, x), _ln(m.write.norm_context, z), tok[:, None] == lat[None, :])


@pytest.mark.parametrize("global_layers", [0, 2])
def test_fit_matches_explicit_reference(global_layers):
    torch.manual_seed(0)
    m = FIT(8, 2, groups=4, latents_per_group=2, local_layers=2, global_layers=global_layers)
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _reference(m, x), atol=1e-5, rtol=1e-5)


def _grad_of_group_wrt_input(m, x, group, n):
    x = x.clone().requires_grad_()
    m(x)[:, group * n : (group + 1) * n].square().sum().backward()
    return x.grad.abs().sum(-1).view(x.shape[0], -1, n).sum((0, 2))  # [G] gradient mass per input group


def test_local_only_block_keeps_groups_independent():
    torch.manual_seed(1)
    m = FIT(8, 2, groups=8, latents_per_group=2, local_layers=2, global_layers=0)
    g = _grad_of_group_wrt_input(m, torch.randn(2, 16, 8), group=7, n=2)
    assert g[7] > 0
    assert torch.equal(g[:7], torch.zeros(7))


def test_global_layer_carries_group_one_to_group_eight():
    torch.manual_seed(2)
    m = FIT(8, 2, groups=8, latents_per_group=2, local_layers=1, global_layers=1)
    g = _grad_of_group_wrt_input(m, torch.randn(2, 16, 8), group=7, n=2)
    assert (g > 0).all()  # group 8's output depends on every group's input, group 1 included


def test_every_attention_goes_through_a_named_site():
    class Sites(Probe):
        def __init__(self):
            self.seen = []

        def observe(self, chunk, site):
            self.seen.append((site.name, tuple(chunk.probs.shape[-2:])))

        def result(self):
            return {}

    probe = Sites()
    m = FIT(8, 2, groups=4, latents_per_group=3, local_layers=2, global_layers=1)
    with attnlab.attach(probes=[probe]):
        m(torch.randn(1, 8, 8))
    names = [n for n, _ in probe.seen]
    assert names == ["fit.local.0", "fit.local.1", "fit.read", "fit.global.0", "fit.write"]
    read = dict(probe.seen)["fit.read"]
    assert read[0] == 12  # 4 groups × 3 latents read the tokens


def test_latents_can_be_carried_between_blocks():
    torch.manual_seed(3)
    a, b = (FIT(8, 2, groups=4, latents_per_group=2, local_layers=1, global_layers=1) for _ in range(2))
    x = torch.randn(2, 8, 8)
    h, z = a(x, return_latents=True)
    assert z.shape == (2, 8, 8)
    y = b(h, z)
    assert y.shape == x.shape and not torch.allclose(y, b(h))


def test_gradcheck_fit():
    torch.manual_seed(4)
    m = FIT(4, 2, groups=2, latents_per_group=1, local_layers=1, global_layers=1, mlp_ratio=1, backend="reference").double()
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype(dtype):
    torch.manual_seed(5)
    m = mechanisms.get("fit", dim=8, heads=2, groups=4, latents_per_group=2, local_layers=1, global_layers=1).to(dtype)
    out = m(torch.randn(2, 12, 8, dtype=dtype))
    assert out.shape == (2, 12, 8) and out.dtype == dtype and not out.isnan().any()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        FIT(10, 3)
    with pytest.raises(ValueError, match="groups must be at least 1"):
        FIT(8, 2, groups=0)
    with pytest.raises(ValueError, match="not both 0"):
        FIT(8, 2, local_layers=0, global_layers=0)
    m = FIT(8, 2, groups=4, latents_per_group=2, local_layers=1, global_layers=1)
    with pytest.raises(ValueError, match="multiple of groups, got T=10, groups=4: pad the sequence to 12"):
        m(torch.randn(1, 10, 8))
    with pytest.raises(ValueError, match="latents must be"):
        m(torch.randn(1, 8, 8), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="local-only block"):
        FIT(8, 2, groups=4, global_layers=0)(torch.randn(1, 8, 8), return_latents=True)
